//! Crash points: places where a node can be made to kill itself (SIGKILL, as a power cut
//! would) so tests reproduce a crash between two steps that no outside kill can time, such as
//! a write durable here but not yet on its copies. Off unless `ferry node run --crash-at`
//! names one.

use std::str::FromStr;

/// A step at which the node kills itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrashPoint {
    /// A client write stored and durable at its master, before any copy has it (so before the
    /// client is acknowledged).
    WriteBeforeReplicate,
}

impl CrashPoint {
    /// Every crash point, by the name `--crash-at` takes.
    pub const ALL: [(&'static str, CrashPoint); 1] =
        [("write-before-replicate", CrashPoint::WriteBeforeReplicate)];
}

impl FromStr for CrashPoint {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        CrashPoint::ALL.iter().find(|(n, _)| *n == name).map(|(_, point)| *point).ok_or_else(|| {
            let names: Vec<&str> = CrashPoint::ALL.iter().map(|(n, _)| *n).collect();
            format!("unknown crash point '{name}' (known: {})", names.join(", "))
        })
    }
}

/// Kills this process with SIGKILL: nothing is flushed or closed on the way out.
pub(crate) fn now(point: CrashPoint) -> ! {
    tracing::error!(?point, "crash point reached; killing this node");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; abort in case raising it failed.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_points_parse_by_name_and_unknown_names_list_the_known_ones() {
        assert_eq!("write-before-replicate".parse(), Ok(CrashPoint::WriteBeforeReplicate));
        let error = "write-after-ack".parse::<CrashPoint>().unwrap_err();
        assert!(error.contains("write-after-ack") && error.contains("write-before-replicate"));
    }
}
