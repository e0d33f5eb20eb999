//! Clients configured with a user and password, as applications written for a secured
//! Aerospike are, against a site without security (Aerospike's default): the Python client and
//! the `aerospike` crate log in, are told security is not enabled, and work without a session;
//! user administration is refused with "security not enabled".

mod support;

use aerospike::{
    AdminPolicy, AuthMode, Bins, Client, ClientPolicy, ReadPolicy, ResultCode, WritePolicy, as_bin,
    as_key,
};
use support::Deployment;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aerospike_crate_logs_in_to_a_site_without_security() {
    let site = Deployment::one_site(1, 1).await;
    let mut policy = ClientPolicy::default();
    policy.set_auth_mode(AuthMode::Internal("app".to_owned(), "app-password".to_owned()));
    let seed = site.site("local")[0].client.to_string();
    let client = Client::new(&policy, &seed).await.expect("connect with a user and password");

    let key = as_key!("test", "login", 1);
    client.put(&WritePolicy::default(), &key, &[as_bin!("v", 1)]).await.expect("put");
    let record = client.get(&ReadPolicy::default(), &key, Bins::All).await.expect("get");
    assert_eq!(record.bins.get("v"), Some(&aerospike::Value::from(1)));

    let admin = AdminPolicy::default();
    match client.create_user(&admin, "bob", "bob-password", &["read"]).await {
        Err(error) => {
            assert_eq!(error.server_result_code(), Some(ResultCode::SecurityNotEnabled), "{error}")
        }
        Ok(()) => panic!("a user was created on a site without security"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_logs_in_to_a_site_without_security() {
    let site = Deployment::one_site(1, 1).await;
    let seed = site.site("local")[0].client.to_string();
    support::python_check("login_check.py", &[seed]).await;
}
