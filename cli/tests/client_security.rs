//! Aerospike security on a site's client port (`security = true`), with real processes and the
//! unmodified `aerospike` crate: clients log in, are refused without a login or the privilege,
//! and manage users and roles through the client's admin API; changes made through one node
//! hold at the others and are audited; Ferry's own info commands that change something need
//! their privilege; a node of another site cannot read the site's users.

mod support;

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use aerospike::{
    AdminPolicy, AuthMode, Bins, Client, ClientPolicy, Privilege, PrivilegeCode, ReadPolicy,
    ResultCode, Value, WritePolicy, as_bin, as_key,
};
use bytes::Bytes;
use ferry_node::proto::msg::{Field, Msg, field, info1};
use ferry_node::proto::{TYPE_ADMIN, TYPE_INFO, admin, frame, info};
use ferry_node::security::password;
use ferry_tests::{Link, Namespace, Site, TopologyBuilder};
use ferry_xdr::link::LinkState;
use support::Deployment;

/// Site `a` (two nodes, security on) linked to site `b` (security off), nodes following the
/// deployment's topology service, which keeps `a`'s users.
async fn secured_sites() -> Deployment {
    let built = TopologyBuilder::new("secured")
        .add_site(Site::new("a", 2).security())
        .add_site(Site::new("b", 1))
        .namespace(Namespace::new("test"))
        .link(Link::new("a", "b").period_ms(20).hot_key_ms(20))
        .build();
    Deployment::start_spec(&built.text, built.nodes, |spec| {
        spec.topology_service = Some(([127, 0, 0, 1], 0).into());
    })
    .await
}

/// The password of `a`'s first user, `admin`, that the deployment generated.
fn admin_password(deployment: &Deployment) -> String {
    let file = deployment.running.state.aerospike_admin_password("a");
    ferry_auth::access::read_secret(&file).expect("the admin password file")
}

fn seeds(deployment: &Deployment) -> String {
    let seeds: Vec<String> = deployment.site("a").iter().map(|n| n.client.to_string()).collect();
    seeds.join(",")
}

async fn login(deployment: &Deployment, user: &str, password: &str) -> aerospike::Result<Client> {
    let mut policy = ClientPolicy::default();
    policy.set_auth_mode(AuthMode::Internal(user.to_owned(), password.to_owned()));
    Client::new(&policy, &seeds(deployment)).await
}

/// Logs in once every node of the site knows the user (a change reaches the other nodes
/// within about a second).
async fn login_eventually(deployment: &Deployment, user: &str, password: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match login(deployment, user, password).await {
            Ok(client) if client.nodes().len() == 2 => return client,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(client) => panic!("{user} reached {} of the 2 nodes", client.nodes().len()),
            Err(error) => panic!("{user} could not log in: {error}"),
        }
    }
}

/// The result code of a failed command.
fn code<T: std::fmt::Debug>(result: aerospike::Result<T>) -> Option<ResultCode> {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(error) => error.server_result_code(),
    }
}

/// Retries `check` (a refusal or acceptance that the other node learns within a second) for
/// up to 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_manage_users_and_roles_and_are_held_to_their_privileges() {
    let deployment = secured_sites().await;
    let admin_secret = admin_password(&deployment);
    let key = as_key!("test", "s", 1);
    let write = WritePolicy::default();
    let read = ReadPolicy::default();

    // Without a login the client learns the cluster but may do nothing with its data.
    let anonymous = Client::new(&ClientPolicy::default(), &seeds(&deployment)).await.expect("tend");
    let refused = anonymous.put(&write, &key, &[as_bin!("v", 1)]).await;
    assert_eq!(code(refused), Some(ResultCode::NotAuthenticated));
    assert_eq!(
        code(anonymous.get(&read, &key, Bins::All).await),
        Some(ResultCode::NotAuthenticated)
    );
    assert!(login(&deployment, "admin", "not-the-password").await.is_err(), "a wrong password");
    assert!(login(&deployment, "nobody", &admin_secret).await.is_err(), "an unknown user");

    let admin = login_eventually(&deployment, "admin", &admin_secret).await;
    let policy = AdminPolicy::default();
    admin.create_user(&policy, "alice", "alice-pw", &["read-write"]).await.expect("alice");
    admin.create_user(&policy, "rita", "rita-pw", &["read"]).await.expect("rita");
    let link_ops = Privilege::new(PrivilegeCode::SysAdmin, None, None);
    admin.create_role(&policy, "link-ops", &[link_ops], &[], 0, 0).await.expect("a role");
    let again = admin.create_user(&policy, "rita", "other", &["read"]).await;
    assert_eq!(code(again), Some(ResultCode::UserAlreadyExists));
    let users = admin.query_users(&policy, Some("alice")).await.expect("query alice");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].roles, ["read-write"]);
    let roles = admin.query_roles(&policy, Some("link-ops")).await.expect("query the role");
    assert_eq!(roles[0].privileges.len(), 1);
    assert_eq!(roles[0].privileges[0].code, PrivilegeCode::SysAdmin);

    // Each user is held to its roles, at every node.
    let alice = login_eventually(&deployment, "alice", "alice-pw").await;
    let rita = login_eventually(&deployment, "rita", "rita-pw").await;
    for n in 0..20i64 {
        alice
            .put(&write, &as_key!("test", "s", n), &[as_bin!("v", n)])
            .await
            .expect("alice writes");
    }
    let record = rita.get(&read, &key, Bins::All).await.expect("rita reads");
    assert_eq!(record.bins["v"], Value::from(1));
    assert_eq!(
        code(rita.put(&write, &key, &[as_bin!("v", 2)]).await),
        Some(ResultCode::RoleViolation)
    );
    assert_eq!(
        code(alice.create_user(&policy, "eve", "eve-pw", &["read"]).await),
        Some(ResultCode::RoleViolation)
    );
    // What alice wrote reaches site b, which has no security.
    deployment.wait_converged("a", "b", Duration::from_secs(30)).await;

    // A new password: the old one logs in no more (connections already open go on, as in
    // Aerospike; their sessions end, so a new connection needs the new password).
    admin.change_password(&policy, "rita", "rita-new").await.expect("set rita's password");
    eventually("rita's old password refused", || async {
        login(&deployment, "rita", "rita-pw").await.is_err()
    })
    .await;
    let rita = login_eventually(&deployment, "rita", "rita-new").await;
    rita.get(&read, &key, Bins::All).await.expect("rita reads again");
    // Her own change: her client goes on with the new password, on every connection.
    rita.change_password(&policy, "rita", "rita-3").await.expect("rita changes her password");
    for _ in 0..20 {
        rita.get(&read, &key, Bins::All).await.expect("rita reads after her own change");
    }

    // A revoked role and a dropped user take effect on connections already open.
    admin.revoke_roles(&policy, "rita", &["read"]).await.expect("revoke");
    eventually("rita's read refused", || async {
        rita.get(&read, &key, Bins::All).await.err().and_then(|e| e.server_result_code())
            == Some(ResultCode::RoleViolation)
    })
    .await;
    admin.drop_user(&policy, "alice").await.expect("drop alice");
    eventually("dropped alice refused", || async {
        alice.put(&write, &key, &[as_bin!("v", 3)]).await.err().and_then(|e| e.server_result_code())
            == Some(ResultCode::NotAuthenticated)
    })
    .await;
    eventually("alice cannot log in", || async {
        login(&deployment, "alice", "alice-pw").await.is_err()
    })
    .await;
    // An alice created again is another user: the first one's connections are still refused.
    admin.create_user(&policy, "alice", "alice-2", &["read-write"]).await.expect("alice again");
    login_eventually(&deployment, "alice", "alice-2").await;
    for _ in 0..3 {
        let put = alice.put(&write, &key, &[as_bin!("v", 4)]).await;
        assert!(put.is_err(), "the dropped alice's client wrote as the new alice");
    }

    // Every change is in the audit trail, by the user who made it, never with a password.
    let trail = audit_trail(&deployment);
    for (action, target) in [
        ("user.create", "a/alice"),
        ("user.create", "a/rita"),
        ("role.create", "a/link-ops"),
        ("user.set-password", "a/rita"),
        ("user.revoke-roles", "a/rita"),
        ("user.drop", "a/alice"),
    ] {
        let found = trail.iter().any(|event| {
            event["action"] == action && event["target"] == target && event["actor"] == "admin"
        });
        assert!(found, "no {action} of {target} by admin in the trail: {trail:#?}");
    }
    let trail = serde_json::to_string(&trail).expect("json");
    assert!(!trail.contains("$2"), "a password hash in the audit trail:\n{trail}");
}

/// The deployment's audit trail (`ferry audit --json`).
fn audit_trail(deployment: &Deployment) -> Vec<serde_json::Value> {
    let (status, out, err) = deployment.ferry(&["audit", "--json"]);
    assert_eq!(status, 0, "{err}");
    serde_json::from_str(&out).expect("the trail is JSON")
}

/// A raw client-port connection that logged in as `user` (or did not, for `None`).
fn connect_as(addr: SocketAddr, user: Option<(&str, &str)>) -> TcpStream {
    let mut stream = support::raw::connect(addr);
    if let Some((user, secret)) = user {
        let hash = password::client_hash(secret).expect("hash");
        let mut body = vec![0u8; 16];
        body[2] = admin::command::LOGIN;
        body[3] = 2;
        for (id, data) in
            [(admin::field::USER, user.as_bytes()), (admin::field::CREDENTIAL, hash.as_bytes())]
        {
            body.extend_from_slice(&u32::try_from(data.len() + 1).expect("short").to_be_bytes());
            body.push(id);
            body.extend_from_slice(data);
        }
        stream.write_all(&frame(TYPE_ADMIN, &body)).expect("send login");
        let (kind, reply) = support::raw::read_frame(&mut stream).expect("login reply");
        assert_eq!((kind, reply[1]), (TYPE_ADMIN, 0), "{user} logs in");
    }
    stream
}

/// The answer to one info command over `stream`.
fn ask(stream: &mut TcpStream, name: &str) -> String {
    stream.write_all(&frame(TYPE_INFO, format!("{name}\n").as_bytes())).expect("send info");
    let (kind, body) = support::raw::read_frame(stream).expect("info reply");
    assert_eq!(kind, TYPE_INFO);
    info::parse_reply(&body).into_iter().next().map(|(_, value)| value).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_info_commands_need_their_privilege_and_a_refusal_changes_nothing() {
    let deployment = secured_sites().await;
    let admin_secret = admin_password(&deployment);
    let admin = login_eventually(&deployment, "admin", &admin_secret).await;
    let policy = AdminPolicy::default();
    admin.create_user(&policy, "reader", "reader-pw", &["read"]).await.expect("reader");
    admin.create_user(&policy, "writer", "writer-pw", &["read-write"]).await.expect("writer");
    admin
        .put(&WritePolicy::default(), &as_key!("test", "t", 1), &[as_bin!("v", 1)])
        .await
        .expect("put");
    let node = deployment.site("a")[0].client;
    // The users reached the node asked below.
    eventually("the node knows the users", || async {
        std::panic::catch_unwind(|| connect_as(node, Some(("writer", "writer-pw")))).is_ok()
    })
    .await;

    let now_ms = ferry_node::record::now_ms();
    let commands = [
        "xdr-link:dc=b;action=pause".to_owned(),
        "set-config:context=xdr;dc=b;period-ms=777".to_owned(),
        "truncate:namespace=test;set=t".to_owned(),
        "truncate-namespace:namespace=test".to_owned(),
        format!("truncate-local:namespace=test;before-ms={now_ms}"),
    ];
    let config_before = ask(&mut connect_as(node, None), "get-config:context=xdr;dc=b");
    for (who, user, expected) in [
        ("no login", None, "ERROR:80:"),
        ("a reader", Some(("reader", "reader-pw")), "ERROR:81:"),
        ("a writer", Some(("writer", "writer-pw")), "ERROR:81:"),
    ] {
        let mut stream = connect_as(node, user);
        for command in &commands {
            let answer = ask(&mut stream, command);
            assert!(answer.starts_with(expected), "{command} by {who}: {answer}");
        }
    }
    // Nothing changed: the link ships, its settings stand, the record is there.
    let stats = deployment.link_stats("a", "b").await;
    assert!(stats.iter().all(|s| s.state == Some(LinkState::Active)), "{stats:?}");
    let config_after = ask(&mut connect_as(node, None), "get-config:context=xdr;dc=b");
    assert_eq!(config_after, config_before);
    let record = admin.get(&ReadPolicy::default(), &as_key!("test", "t", 1), Bins::All).await;
    assert!(record.is_ok(), "a refused truncate removed the record");

    // The first user may: pause and resume the link.
    let mut stream = connect_as(node, Some(("admin", &admin_secret)));
    assert_eq!(ask(&mut stream, "xdr-link:dc=b;action=pause"), "ok");
    assert_eq!(ask(&mut stream, "xdr-link:dc=b;action=resume"), "ok");
    let trail = audit_trail(&deployment);
    let paused_by_admin =
        trail.iter().any(|event| event["action"] == "link.pause" && event["actor"] == "admin");
    assert!(paused_by_admin, "the pause is not audited as admin's: {trail:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_site_cannot_read_or_change_the_sites_users() {
    let deployment = secured_sites().await;
    let url = deployment.topology_service_url().trim_start_matches("http://").to_owned();
    let addr: SocketAddr = url.parse().expect("service address");
    let token = |node: &str| {
        let file = deployment.running.state.root.join(node).join("topology.token");
        ferry_auth::access::read_credential(&file).expect("node token").expose()
    };
    let (status, body) = ferry_tests::http(addr, Some(&token("b-0")), "GET", "/v1/security/a");
    assert_eq!(status, 403, "b's node read a's users: {body}");
    let (status, body) = ferry_tests::http(addr, Some(&token("a-0")), "GET", "/v1/security/a");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"admin\""), "{body}");
    assert!(!body.contains(&admin_password(&deployment)), "the password itself is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_logs_in_and_manages_users_and_roles() {
    let deployment = secured_sites().await;
    let seed = deployment.site("a")[0].client.to_string();
    support::python_check("security_check.py", &[seed, admin_password(&deployment)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_site_needs_the_topology_service_that_keeps_its_users() {
    let built =
        TopologyBuilder::new("secured-alone").add_site(Site::new("a", 1).security()).build();
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ferry::deploy::DeploySpec::new(support::ferry_bin(), dir.path(), &built.text);
    let error = ferry::deploy::Deployment::start(spec).await.expect_err("started without users");
    let logged =
        std::fs::read_to_string(dir.path().join("a-0").join("node.log")).unwrap_or_default();
    let said = format!("{error}\n{logged}");
    assert!(said.contains("run the node with --topology-service"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privilege_on_one_set_reaches_no_record_of_another_through_its_digest() {
    let deployment = secured_sites().await;
    let admin_secret = admin_password(&deployment);
    let admin = login_eventually(&deployment, "admin", &admin_secret).await;
    let policy = AdminPolicy::default();
    let public =
        Privilege::new(PrivilegeCode::ReadWrite, Some("test".into()), Some("public".into()));
    admin.create_role(&policy, "public-rw", &[public], &[], 0, 0).await.expect("role");
    admin.create_user(&policy, "pub", "pub-pw", &["public-rw"]).await.expect("user");
    let secret_key = as_key!("test", "secret", 7);
    admin.put(&WritePolicy::default(), &secret_key, &[as_bin!("v", 1)]).await.expect("put");
    let pub_client = login_eventually(&deployment, "pub", "pub-pw").await;
    pub_client
        .put(&WritePolicy::default(), &as_key!("test", "public", 7), &[as_bin!("v", 2)])
        .await
        .expect("pub writes its own set");

    // The secret record's digest, sent as if it were in `public`, at each node of the site.
    for node in deployment.site("a") {
        let request = |info1: u8, info2: u8| Msg {
            info1,
            info2,
            fields: vec![
                Field { kind: field::NAMESPACE, data: Bytes::from_static(b"test") },
                Field { kind: field::SET, data: Bytes::from_static(b"public") },
                Field { kind: field::DIGEST, data: Bytes::copy_from_slice(&secret_key.digest()) },
            ],
            ..Msg::default()
        };
        let mut stream = connect_as(node.client, Some(("pub", "pub-pw")));
        let read = support::raw::request(&mut stream, &request(info1::READ | info1::GET_ALL, 0));
        assert_eq!(read.result_code, 4, "a read of another set's record through {}", node.id);
        let delete = ferry_node::proto::msg::info2::WRITE | ferry_node::proto::msg::info2::DELETE;
        let deleted = support::raw::request(&mut stream, &request(0, delete));
        assert_eq!(deleted.result_code, 4, "a delete of another set's record through {}", node.id);
    }
    let record = admin.get(&ReadPolicy::default(), &secret_key, Bins::All).await.expect("kept");
    assert_eq!(record.bins["v"], Value::from(1));
}
