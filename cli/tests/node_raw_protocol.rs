//! The node's protocol edges, spoken byte by byte over TCP to real node processes: requests
//! that reach a node which does not own the partition are forwarded to the owner; malformed
//! frames get a parameter error or a closed connection and never harm the node; unsupported
//! features answer result code 16; info replies follow request order; a flood of large
//! request bodies holds no more memory than the node's request budget.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;

use bytes::Bytes;
use ferry_node::proto::msg::{Field, Msg, Op, field, info1, info2, op};
use ferry_node::proto::{TYPE_INFO, TYPE_MSG, frame};
use ferry_topology::placement::{PartitionMap, partition_of};
use support::Deployment;
use support::raw::{connect, read_frame, request};

/// A 3-node site started through the deployment module, its client addresses by node id, and
/// its partition map.
struct Site {
    /// Kills the nodes when the test ends.
    deployment: Deployment,
    clients: Vec<(String, SocketAddr)>,
    map: PartitionMap,
}

fn start_site() -> Site {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let deployment = runtime.block_on(Deployment::one_site(3, 1));
    let clients = deployment.site("local").iter().map(|n| (n.id.clone(), n.client)).collect();
    let map =
        PartitionMap::for_namespace(&deployment.running.topology, "local", "test").expect("map");
    Site { deployment, clients, map }
}

fn digest_of(key: &str) -> [u8; 20] {
    aerospike::Key::new("test", "raw", aerospike::Value::from(key)).expect("key").digest()
}

fn keyed(digest: [u8; 20], info1: u8, info2: u8, ops: Vec<Op>) -> Msg {
    Msg {
        info1,
        info2,
        fields: vec![
            Field { kind: field::NAMESPACE, data: Bytes::from_static(b"test") },
            Field { kind: field::SET, data: Bytes::from_static(b"raw") },
            Field { kind: field::DIGEST, data: Bytes::copy_from_slice(&digest) },
        ],
        ops,
        ..Msg::default()
    }
}

fn put_op(value: i64) -> Op {
    Op {
        kind: op::WRITE,
        particle: 1,
        name: "v".into(),
        value: Bytes::copy_from_slice(&value.to_be_bytes()),
    }
}

#[test]
fn requests_at_a_non_owner_are_forwarded_to_the_owner() {
    let site = start_site();
    for n in 0..20 {
        let digest = digest_of(&format!("k{n}"));
        let owner = site.map.master(partition_of(&digest)).to_string();
        let (_, elsewhere) =
            site.clients.iter().find(|(id, _)| *id != owner).expect("another node");
        let (_, at_owner) = site.clients.iter().find(|(id, _)| *id == owner).expect("owner");
        let mut wrong = connect(*elsewhere);
        let put = request(&mut wrong, &keyed(digest, 0, info2::WRITE, vec![put_op(n)]));
        assert_eq!(put.result_code, 0, "put through a non-owner");
        // The record lives at the owner: read it there directly, and through the non-owner.
        let get = keyed(digest, info1::READ | info1::GET_ALL, 0, Vec::new());
        for addr in [at_owner, elsewhere] {
            let reply = request(&mut connect(*addr), &get);
            assert_eq!(reply.result_code, 0);
            assert_eq!(reply.ops[0].value.as_ref(), n.to_be_bytes());
        }
    }
}

#[test]
fn malformed_frames_never_harm_the_node() {
    let site = start_site();
    let addr = site.clients[0].1;
    let digest = digest_of("survivor");
    let owner = site.map.master(partition_of(&digest)).to_string();
    let owner_addr = site.clients.iter().find(|(id, _)| *id == owner).expect("owner").1;
    request(&mut connect(owner_addr), &keyed(digest, 0, info2::WRITE, vec![put_op(7)]));

    // Wrong protocol version: the connection is closed.
    let mut bad_version = connect(addr);
    bad_version.write_all(&[9, 3, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]).expect("send");
    let mut sink = Vec::new();
    assert_eq!(bad_version.read_to_end(&mut sink).expect("closed cleanly"), 0);

    // A declared size beyond the limit: closed before the body is read.
    let mut huge = connect(addr);
    huge.write_all(&[2, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).expect("send");
    assert_eq!(huge.read_to_end(&mut sink).expect("closed"), 0);

    // An AS_MSG whose fields run past its end: a parameter error, then the connection closes.
    let mut truncated_body = keyed(digest, info1::READ, 0, Vec::new()).encode();
    truncated_body.truncate(truncated_body.len() - 5);
    let mut truncated = connect(addr);
    truncated.write_all(&frame(TYPE_MSG, &truncated_body)).expect("send");
    let (_, body) = read_frame(&mut truncated).expect("an answer before closing");
    assert_eq!(Msg::decode(&body).expect("reply").result_code, 4);

    // Random garbage in well-formed frames, on fresh connections.
    let mut seed = 0x9e37_79b9_u64;
    for _ in 0..200 {
        let len = (seed % 64) as usize;
        let garbage = support::noise(&mut seed, len);
        let mut stream = connect(addr);
        let _ = stream.write_all(&frame(TYPE_MSG, &garbage));
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.read_to_end(&mut sink);
    }

    // The node still serves, and the record is intact.
    let reply = request(
        &mut connect(owner_addr),
        &keyed(digest, info1::READ | info1::GET_ALL, 0, Vec::new()),
    );
    assert_eq!(reply.result_code, 0);
    assert_eq!(reply.ops[0].value.as_ref(), 7i64.to_be_bytes());
}

#[test]
fn unsupported_features_answer_result_code_16_and_info_keeps_order() {
    let site = start_site();
    let digest = digest_of("udf");
    let owner = site.map.master(partition_of(&digest)).to_string();
    let addr = site.clients.iter().find(|(id, _)| *id == owner).expect("owner").1;
    let mut stream = connect(addr);

    let mut udf = keyed(digest, 0, info2::WRITE, Vec::new());
    udf.fields.push(Field { kind: field::UDF_PACKAGE_NAME, data: Bytes::from_static(b"pkg") });
    assert_eq!(request(&mut stream, &udf).result_code, 16);
    let mut filtered = keyed(digest, info1::READ | info1::GET_ALL, 0, Vec::new());
    filtered.fields.push(Field { kind: field::FILTER_EXP, data: Bytes::from_static(&[0x93]) });
    assert_eq!(request(&mut stream, &filtered).result_code, 16);
    let cdt = keyed(
        digest,
        0,
        info2::WRITE,
        vec![Op { kind: op::CDT_MODIFY, particle: 0, name: "l".into(), value: Bytes::new() }],
    );
    assert_eq!(request(&mut stream, &cdt).result_code, 16);

    stream.write_all(&frame(TYPE_INFO, b"build\nnode\nno-such-thing\nnamespaces\n")).expect("info");
    let (kind, body) = read_frame(&mut stream).expect("info reply");
    assert_eq!(kind, TYPE_INFO);
    let text = String::from_utf8(body).expect("utf-8");
    let names: Vec<&str> = text.lines().map(|l| l.split('\t').next().unwrap_or("")).collect();
    assert_eq!(names, ["build", "node", "no-such-thing", "namespaces"]);
    assert!(text.contains(&format!("node\t{owner}\n")));
    assert!(text.contains("no-such-thing\tERROR:4:unrecognized command\n"), "{text}");
}

/// The resident memory of process `pid`, in MiB.
fn resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS kB");
    kib / 1024
}

#[test]
fn a_flood_of_large_request_bodies_holds_no_more_than_the_request_budget() {
    let site = start_site();
    let (id, addr) = site.clients[0].clone();
    let pid = site.deployment.pid(&id).expect("node running");
    let before = resident_mib(pid);

    // Sixteen clients each declare a 64 MiB request and send all of it but the last byte, so a
    // node that read every body at once would hold a gigabyte. The budget (256 MiB) admits four
    // bodies; the rest wait in the sockets, held back by TCP flow control.
    const CLIENTS: usize = 16;
    const BODY: usize = 64 << 20;
    let mut header = [2u8, TYPE_MSG, 0, 0, 0, 0, 0, 0];
    header[2..].copy_from_slice(&(BODY as u64).to_be_bytes()[2..]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS + 1));
    let (done, all_sent) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (barrier, done) = (barrier.clone(), done.clone());
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                stream.set_write_timeout(Some(std::time::Duration::from_secs(3))).expect("timeout");
                let chunk = vec![0x5a_u8; 1 << 20];
                let _ = stream.write_all(&header);
                for _ in 0..BODY / chunk.len() - 1 {
                    if stream.write_all(&chunk).is_err() {
                        break; // held back: the node is not reading this body yet
                    }
                }
                let _ = stream.write_all(&chunk[..chunk.len() - 1]);
                let _ = done.send(());
                barrier.wait(); // keep the connection open until measured
            })
        })
        .collect();
    for _ in 0..CLIENTS {
        all_sent
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a client finished sending");
    }
    let during = resident_mib(pid);
    barrier.wait();
    for client in clients {
        client.join().expect("client thread");
    }
    assert!(
        during.saturating_sub(before) < 400,
        "resident memory grew from {before} MiB to {during} MiB under the flood"
    );

    // The node still serves.
    let digest = digest_of("after the flood");
    let reply = request(&mut connect(addr), &keyed(digest, 0, info2::WRITE, vec![put_op(1)]));
    assert_eq!(reply.result_code, 0);
    eprintln!("resident memory: {before} MiB before, {during} MiB during the flood");
}

#[test]
fn a_forward_to_an_owner_that_never_answers_the_handshake_times_out() {
    let mut site = start_site();
    let digest = (0..)
        .map(|n| digest_of(&format!("blackholed {n}")))
        .find(|d| site.map.master(partition_of(d)).to_string() != site.clients[0].0)
        .expect("a key owned elsewhere");
    let owner = site.map.master(partition_of(&digest)).to_string();

    // The owner is gone, and its fabric address drops every SYN: a listener that never accepts,
    // its accept queue full (Linux drops SYNs to a full queue instead of refusing them).
    site.deployment.kill_node(&owner);
    let fabric = site.deployment.node(&owner).fabric;
    let blackhole = std::net::TcpListener::bind(fabric).expect("bind the owner's fabric address");
    let mut queued = Vec::new();
    while let Ok(stream) =
        std::net::TcpStream::connect_timeout(&fabric, std::time::Duration::from_millis(300))
    {
        queued.push(stream);
        assert!(queued.len() < 1024, "the accept queue never filled");
    }

    // The non-owner answers the client within its forward timeout (10 s), with an error.
    let started = std::time::Instant::now();
    let mut stream = connect(site.clients[0].1);
    stream.set_read_timeout(Some(std::time::Duration::from_secs(25))).expect("timeout");
    let reply = request(&mut stream, &keyed(digest, 0, info2::WRITE, vec![put_op(1)]));
    assert_ne!(reply.result_code, 0, "a forward that reached no one cannot succeed");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    drop((blackhole, queued));
}
