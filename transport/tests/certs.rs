//! `certs::init` / `certs::show` on disk, and endpoints running on the files they write.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ferry_transport::certs::{self, CertError};
use ferry_transport::{AllowAll, Endpoint, Frame, NodeCredentials, TrustStore};

#[test]
fn init_writes_a_ca_per_site_and_a_private_key_per_node() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = certs::init(&pki.members, dir.path()).expect("init");
    assert_eq!(summary.sites.len(), 3);
    assert!(summary.sites.iter().all(|s| s.ca_created && s.issued.len() == 1));
    for file in ["us-east/ca.pem", "us-east/ca.key", "us-east/use-a.pem", "us-east/use-a.key"] {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["us-east/ca.key", "eu-west/euw_a.key"] {
            let mode = std::fs::metadata(dir.path().join(key)).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
    let text = summary.to_string();
    assert!(text.contains("site eu-west: CA created; issued euw_a"), "{text}");

    // A second run keeps everything.
    let again = certs::init(&pki.members, dir.path()).expect("init again");
    assert!(again.sites.iter().all(|s| !s.ca_created && s.issued.is_empty() && s.kept.len() == 1));

    // A removed node certificate is reissued by the existing CA.
    std::fs::remove_file(dir.path().join("us-east/use-a.pem")).expect("rm");
    let third = certs::init(&pki.members, dir.path()).expect("init third");
    let us = third.sites.iter().find(|s| s.site == site("us-east")).expect("us-east");
    assert!(!us.ca_created);
    assert_eq!(us.issued, vec![node("use-a")]);

    let report = certs::show(dir.path()).expect("show");
    assert_eq!(report.sites.len(), 3);
    for site in &report.sites {
        for node in &site.nodes {
            assert!(node.signed_by_site_ca, "{}", node.path.display());
            assert!(node.key_private);
        }
    }
    let text = report.to_string();
    assert!(text.contains("node ferry://site/us-east/node/use-a"), "{text}");
    assert!(text.contains("use-a.us-east.ferry 127.0.0.1"), "{text}");
    assert!(text.contains("CA  O=ferry, OU=us-east, CN=ferry site CA us-east"), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn show_warns_about_readable_keys_and_refuses_an_empty_directory() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(certs::show(dir.path()), Err(CertError::Empty(_))));
    certs::init(&pki.members, dir.path()).expect("init");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("us-east/use-a.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = certs::show(dir.path()).expect("show").to_string();
        assert!(text.contains("use-a.key is missing or readable by others"), "{text}");
    }
}

#[tokio::test]
async fn endpoints_run_on_the_files_init_wrote() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init(&pki.members, dir.path()).expect("init");
    let trust = TrustStore::load(&pki.members, dir.path()).expect("trust");
    let endpoint = |site_name: &str, node_name: &str| {
        let creds =
            NodeCredentials::load(dir.path(), &site(site_name), &node(node_name)).expect("creds");
        Endpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            &creds,
            trust.clone(),
            Arc::new(AllowAll),
            fast_settings(),
        )
        .expect("bind")
    };
    let server = endpoint("us-east", "use-a");
    server.serve(Arc::new(Echo)).expect("serve");
    let sender = endpoint("eu-west", "euw_a");
    let reply = sender
        .client(id("us-east", "use-a"), addr(&server))
        .request(Frame::new(ty(ECHO), Bytes::from_static(b"from disk")))
        .await
        .expect("request");
    assert_eq!(&reply.payload[..], b"from disk");

    let missing = NodeCredentials::load(dir.path(), &site("us-east"), &node("nope"));
    assert!(matches!(missing, Err(CertError::Io { .. })));
}

#[test]
fn init_refuses_a_ca_whose_key_does_not_match() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init(&pki.members, dir.path()).expect("init");
    std::fs::copy(dir.path().join("eu-west/ca.key"), dir.path().join("us-east/ca.key"))
        .expect("swap key");
    std::fs::remove_file(dir.path().join("us-east/use-a.pem")).expect("rm");
    let err = certs::init(&pki.members, dir.path()).expect_err("mismatched key");
    assert!(err.to_string().contains("does not match the key"), "{err}");
}
