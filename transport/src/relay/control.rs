//! The relay's control socket: one text command per line over TCP, one JSON answer per line.
//!
//! ```text
//! show                                   shapes and counters
//! set [forward|reverse|both] KEY=VALUE…  e.g. `set both delay-ms=75 loss=0.01 rate-mbit=100`
//! partition on|off                       drop everything / resume, both directions
//! ```
//!
//! Keys are those of [`super::apply_setting`]. Answers are `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`. Commands are parsed by the pure [`ControlCommand::parse`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Direction, LinkShape, RelayCounters, RelayError, Shared, apply_setting};

/// Longest accepted command line.
const MAX_LINE: usize = 1024;

/// Which directions a `set` applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directions {
    /// Listen → forward only.
    Forward,
    /// Forward → listen only.
    Reverse,
    /// Both.
    Both,
}

impl Directions {
    fn list(self) -> &'static [Direction] {
        match self {
            Directions::Forward => &[Direction::Forward],
            Directions::Reverse => &[Direction::Reverse],
            Directions::Both => &[Direction::Forward, Direction::Reverse],
        }
    }
}

/// One control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlCommand {
    /// Report shapes and counters.
    Show,
    /// Change settings of some directions.
    Set {
        /// Which directions.
        directions: Directions,
        /// `(key, value)` pairs, checked by [`apply_setting`].
        settings: Vec<(String, String)>,
    },
    /// Turn the partition switch on or off.
    Partition(bool),
}

impl ControlCommand {
    /// Parses one command line; the settings of `set` are validated here too.
    pub fn parse(line: &str) -> Result<ControlCommand, String> {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("show") => Ok(ControlCommand::Show),
            Some("partition") => match words.next() {
                Some("on") => Ok(ControlCommand::Partition(true)),
                Some("off") => Ok(ControlCommand::Partition(false)),
                _ => Err("usage: partition on|off".to_owned()),
            },
            Some("set") => {
                let mut words = words.peekable();
                let directions = match words.peek().copied() {
                    Some("forward") => Directions::Forward,
                    Some("reverse") => Directions::Reverse,
                    Some("both") => Directions::Both,
                    _ => Directions::Both,
                };
                if matches!(words.peek().copied(), Some("forward" | "reverse" | "both")) {
                    words.next();
                }
                let mut settings = Vec::new();
                let mut probe = LinkShape::default();
                for word in words {
                    let (key, value) =
                        word.split_once('=').ok_or_else(|| format!("'{word}' is not KEY=VALUE"))?;
                    apply_setting(&mut probe, key, value)?;
                    settings.push((key.to_owned(), value.to_owned()));
                }
                if settings.is_empty() {
                    return Err("usage: set [forward|reverse|both] KEY=VALUE...".to_owned());
                }
                Ok(ControlCommand::Set { directions, settings })
            }
            Some(other) => Err(format!("unknown command '{other}'; use show, set, partition")),
            None => Err("empty command".to_owned()),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct ShapeView {
    delay_ms: f64,
    jitter_ms: f64,
    loss: f64,
    rate_mbit: Option<f64>,
    partitioned: bool,
}

impl From<LinkShape> for ShapeView {
    fn from(s: LinkShape) -> ShapeView {
        ShapeView {
            delay_ms: s.delay.as_secs_f64() * 1000.0,
            jitter_ms: s.jitter.as_secs_f64() * 1000.0,
            loss: s.loss,
            rate_mbit: s.rate.map(|r| r as f64 / 125_000.0),
            partitioned: s.partitioned,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    forward: ShapeView,
    reverse: ShapeView,
    counters: RelayCounters,
}

fn execute(shared: &Shared, command: ControlCommand) -> String {
    match command {
        ControlCommand::Show => {}
        ControlCommand::Partition(on) => {
            for direction in Directions::Both.list() {
                shared.update(*direction, &mut |s| s.partitioned = on);
            }
        }
        ControlCommand::Set { directions, settings } => {
            for direction in directions.list() {
                shared.update(*direction, &mut |shape| {
                    for (key, value) in &settings {
                        // Validated by `parse`; a failure here leaves the field unchanged.
                        let _ = apply_setting(shape, key, value);
                    }
                });
            }
        }
    }
    let report = Report {
        ok: true,
        forward: shared.shape(Direction::Forward).into(),
        reverse: shared.shape(Direction::Reverse).into(),
        counters: shared.counters(),
    };
    serde_json::to_string(&report).unwrap_or_else(|e| error_json(&e.to_string()))
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "ok": false, "error": message }).to_string()
}

pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => break,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move { session(stream, &shared).await });
    }
}

async fn session(stream: TcpStream, shared: &Shared) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(64 * 1024)).lines();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(300), lines.next_line()).await
    {
        let answer = if line.len() > MAX_LINE {
            error_json("command too long")
        } else {
            match ControlCommand::parse(&line) {
                Ok(command) => execute(shared, command),
                Err(e) => error_json(&e),
            }
        };
        if write.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Sends one command to a relay's control socket and returns its JSON answer
/// (an error if the answer says `"ok":false`).
pub async fn request(control: SocketAddr, command: &str) -> Result<String, RelayError> {
    let io = |action: &str| {
        let action = format!("{action} relay control {control}");
        move |source| RelayError::Io { action, source }
    };
    let exchange = async {
        let mut stream = TcpStream::connect(control).await.map_err(io("connect to"))?;
        stream
            .write_all(format!("{}\n", command.trim()).as_bytes())
            .await
            .map_err(io("write to"))?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.map_err(io("read from"))?;
        Ok::<_, RelayError>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| RelayError::Control(format!("{control} did not answer within 5 s")))??;
    let value: serde_json::Value = serde_json::from_str(answer.trim())
        .map_err(|e| RelayError::Control(format!("unreadable answer '{}': {e}", answer.trim())))?;
    if value["ok"] == serde_json::Value::Bool(true) {
        Ok(answer.trim().to_owned())
    } else {
        Err(RelayError::Control(value["error"].as_str().unwrap_or("unknown error").to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(ControlCommand::parse("show"), Ok(ControlCommand::Show));
        assert_eq!(ControlCommand::parse(" partition on "), Ok(ControlCommand::Partition(true)));
        assert_eq!(
            ControlCommand::parse("set reverse delay-ms=75 loss=0.01"),
            Ok(ControlCommand::Set {
                directions: Directions::Reverse,
                settings: vec![
                    ("delay-ms".to_owned(), "75".to_owned()),
                    ("loss".to_owned(), "0.01".to_owned())
                ]
            })
        );
        assert!(matches!(
            ControlCommand::parse("set rate-mbit=100"),
            Ok(ControlCommand::Set { directions: Directions::Both, .. })
        ));
    }

    #[test]
    fn refuses_bad_commands() {
        for bad in [
            "",
            "reboot",
            "partition maybe",
            "set",
            "set loss=2",
            "set delay-ms=-1",
            "set volume=11",
            "set both delay",
        ] {
            assert!(ControlCommand::parse(bad).is_err(), "{bad}");
        }
    }
}
