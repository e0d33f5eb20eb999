//! Members in one process over an in-memory transport that a test can cut: the group removes
//! a silent node only after that node's lease ran out, re-admits it when it answers again,
//! keeps its epoch across restarts, and admits a node added to the site.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_membership::{
    Change, Heartbeat, Intent, Member, MemberConfig, Planner, SiteMembership, Transport,
};

/// Plans removals and re-admissions as down-set changes, a filled partition as its holder,
/// and a join as a new member; the site's nodes are what the test says.
struct DownSet {
    nodes: Mutex<Vec<String>>,
}

impl DownSet {
    fn new(nodes: &[&str]) -> Arc<Self> {
        Arc::new(Self { nodes: Mutex::new(nodes.iter().map(|n| n.to_string()).collect()) })
    }
}

impl Planner for DownSet {
    fn plan(&self, current: &SiteMembership, intent: &Intent) -> Option<Change> {
        let mut down = current.down.clone();
        let mut holders = BTreeMap::new();
        let mut members = None;
        match intent {
            Intent::Remove { node } => down.insert(node.clone()),
            Intent::Readmit { node } => down.remove(node),
            Intent::Filled { node, namespace, partitions, .. } => {
                let filled = partitions.iter().map(|&p| (p, Some(vec![node.clone()])));
                holders.insert(namespace.clone(), filled.collect());
                true
            }
            Intent::Join { node } => {
                let mut joined = current.members.clone()?;
                let added = joined.insert(node.clone());
                members = Some(joined);
                added
            }
        }
        .then(|| Change {
            base_epoch: current.epoch,
            down,
            holders,
            restarted: BTreeMap::new(),
            members,
            reason: intent.clone(),
        })
    }

    fn nodes(&self) -> Vec<String> {
        self.nodes.lock().expect("nodes").clone()
    }

    fn fingerprint(&self, _: &SiteMembership) -> u64 {
        0
    }

    fn roster(&self) -> u64 {
        ferry_membership::raft_id(&self.nodes().join(","))
    }
}

/// Delivers requests to members in this process, except to or from a cut node.
#[derive(Default)]
struct Loopback {
    members: Mutex<BTreeMap<String, Weak<Member<Wire>>>>,
    cut: Mutex<BTreeSet<String>>,
}

struct Wire {
    me: String,
    net: Arc<Loopback>,
}

impl Transport for Wire {
    async fn call(
        &self,
        peer: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, std::io::Error> {
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let target = {
            let cut = self.net.cut.lock().expect("cut");
            if cut.contains(&self.me) || cut.contains(peer) {
                return Err(refused());
            }
            self.net.members.lock().expect("members").get(peer).and_then(Weak::upgrade)
        };
        let target = target.ok_or_else(refused)?;
        tokio::time::timeout(timeout, target.handle(&request))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
    }
}

const NODES: [&str; 3] = ["a", "b", "c"];

fn heartbeat() -> Heartbeat {
    Heartbeat { interval: Duration::from_millis(50), misses: 10 }
}

async fn start(net: &Arc<Loopback>, dir: &std::path::Path) -> Vec<Arc<Member<Wire>>> {
    let planner = DownSet::new(&NODES);
    let mut members = Vec::new();
    for name in NODES {
        members.push(start_one(net, dir, name, &planner).await);
    }
    members
}

async fn start_one(
    net: &Arc<Loopback>,
    dir: &std::path::Path,
    name: &str,
    planner: &Arc<DownSet>,
) -> Arc<Member<Wire>> {
    let mut config = MemberConfig::new(name, dir.join(name));
    config.heartbeat = heartbeat();
    config.lease = heartbeat().timeout() * 2 / 3;
    let wire = Arc::new(Wire { me: name.to_owned(), net: Arc::clone(net) });
    let planner: Arc<dyn Planner> = Arc::clone(planner) as _;
    let member = Arc::new(Member::start(config, wire, planner).await.expect("start"));
    net.members.lock().expect("members").insert(name.to_owned(), Arc::downgrade(&member));
    member
}

async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn committed(member: &Member<Wire>) -> SiteMembership {
    member.membership().borrow().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_node_loses_its_lease_before_its_removal_commits_and_returns_when_healed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Loopback::default());
    let members = start(&net, dir.path()).await;
    let [a, b, c] = [&members[0], &members[1], &members[2]];
    until("every lease and a leader", Duration::from_secs(10), || {
        members.iter().all(|m| m.lease_holds() && m.status().leader.is_some())
    })
    .await;

    net.cut.lock().expect("cut").insert("c".into());
    let cut_at = Instant::now();
    let c_stopped =
        until("c to stop acknowledging", Duration::from_secs(5), || !c.lease_holds()).await;
    let removed = until("c's removal", Duration::from_secs(10), || {
        [a, b].iter().all(|m| committed(m).down.contains("c"))
    })
    .await;
    assert!(
        c_stopped < removed,
        "c held its lease until {:?} after the cut, removal committed at {:?}",
        c_stopped - cut_at,
        removed - cut_at
    );
    // c's last heartbeat may have landed up to an interval before the cut.
    let timeout = heartbeat().timeout() - heartbeat().interval;
    assert!(removed - cut_at >= timeout, "removed {:?} after the cut", removed - cut_at);
    assert_eq!(committed(a).epoch, 2);
    assert!(a.lease_holds() && b.lease_holds(), "the majority keeps acknowledging");

    net.cut.lock().expect("cut").clear();
    until("c's readmission", Duration::from_secs(10), || {
        members.iter().all(|m| committed(m).down.is_empty() && committed(m).epoch == 3)
    })
    .await;
    until("c's lease", Duration::from_secs(5), || c.lease_holds()).await;
    let status = c.status();
    assert_eq!((status.epoch, status.down.len()), (3, 0));

    // Any member may propose; the leader plans and commits it.
    let follower =
        members.iter().find(|m| m.status().leader.as_deref() != Some(m.name())).expect("one");
    let filled = Intent::Filled {
        node: "c".into(),
        namespace: "test".into(),
        partitions: vec![9],
        since: 3,
    };
    assert_eq!(follower.propose(filled).await, Ok(4));
    until("the filled partition everywhere", Duration::from_secs(5), || {
        members.iter().all(|m| committed(m).holders.get("test").is_some_and(|p| p.contains_key(&9)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_epoch_survives_a_restart_of_the_whole_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Loopback::default());
    let members = start(&net, dir.path()).await;
    until("every lease", Duration::from_secs(10), || members.iter().all(|m| m.lease_holds())).await;
    net.cut.lock().expect("cut").insert("b".into());
    until("b's removal", Duration::from_secs(10), || committed(&members[0]).epoch == 2).await;
    for member in members {
        let member = Arc::into_inner(member).expect("sole owner");
        member.shutdown().await;
    }
    net.cut.lock().expect("cut").clear();

    let net = Arc::new(Loopback::default());
    let members = start(&net, dir.path()).await;
    // Before any election: each node starts from what it had applied durably.
    let epochs: Vec<u64> = members.iter().map(|m| committed(m).epoch).collect();
    assert!(epochs.iter().all(|&e| e <= 2));
    until("b's readmission after the restart", Duration::from_secs(10), || {
        members.iter().all(|m| committed(m).epoch == 3 && committed(m).down.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_the_site_joins_the_group_then_placement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Loopback::default());
    let planner = DownSet::new(&NODES);
    let mut members = Vec::new();
    for name in NODES {
        members.push(start_one(&net, dir.path(), name, &planner).await);
    }
    until("every lease", Duration::from_secs(10), || {
        members.iter().all(|m| m.lease_holds() && m.settled())
    })
    .await;
    let first = committed(&members[0]);
    assert_eq!(first.members, Some(NODES.iter().map(|n| n.to_string()).collect()));
    assert_eq!(first.epoch, 1, "the first members change no epoch");

    // The topology lists d on every node (they share the planner); d starts pristine.
    planner.nodes.lock().expect("nodes").push("d".into());
    let d = start_one(&net, dir.path(), "d", &planner).await;
    assert!(!d.settled(), "a pristine node that did not found the group knows no map");
    assert!(!d.lease_holds());
    members.push(d);
    until("d in placement everywhere", Duration::from_secs(20), || {
        members.iter().all(|m| committed(m).is_member("d"))
    })
    .await;
    let joined = committed(&members[3]);
    assert_eq!(joined.epoch, 2, "the admission is one change");
    assert_eq!(joined.readmitted.get("d"), Some(&2), "d is filled like a returning node");
    until("d's lease", Duration::from_secs(5), || members[3].settled() && members[3].lease_holds())
        .await;
    assert!(members[3].status().silent_ms.len() == 3);

    // d is a voter: with two of four cut, nobody holds a lease (no majority).
    net.cut.lock().expect("cut").extend(["c".to_owned(), "d".to_owned()]);
    until("no lease with half cut", Duration::from_secs(5), || {
        members.iter().all(|m| !m.lease_holds())
    })
    .await;
}
