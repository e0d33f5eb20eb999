//! The unmodified Python `aerospike` client (C client inside) against a real 3-node site:
//! put/get/remove, exists, touch, operate (creating missing bins), batch and scan, with int,
//! str and bytes keys; removing the last bin deletes the record; truncate empties a set.
//! The Python environment is `.venv` at the workspace root (`bash .ci/test` creates it).

mod support;

use support::Deployment;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_works_against_a_three_node_site() {
    let site = Deployment::one_site(3, 2).await;
    let seed = site.site("local")[1].client.to_string();
    support::python_check("client_check.py", &[seed]).await;
}
