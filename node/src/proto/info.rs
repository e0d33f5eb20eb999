//! The info protocol: a request is names separated by newlines; the reply has one
//! `name\tvalue\n` line per asked name, in request order, and never an unrequested name.

use super::FrameError;

/// The names asked for, in order (empty lines ignored).
pub fn parse_request(body: &[u8]) -> Result<Vec<&str>, FrameError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| FrameError::Malformed("info request is not UTF-8"))?;
    Ok(text.split('\n').map(|name| name.trim_end_matches('\r')).filter(|n| !n.is_empty()).collect())
}

/// Builds the reply body from (name, value) pairs.
pub fn reply<'a>(answers: impl IntoIterator<Item = (&'a str, String)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in answers {
        out.extend_from_slice(name.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The value of each `name\tvalue` line of a reply, keyed by name.
pub fn parse_reply(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Asks a node's client port for info `names`; the CLI's and the tests' way to read stats.
pub async fn ask(
    addr: std::net::SocketAddr,
    names: &[&str],
) -> std::io::Result<Vec<(String, String)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body: String = names.iter().map(|n| format!("{n}\n")).collect();
        stream.write_all(&super::frame(super::TYPE_INFO, body.as_bytes())).await?;
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).await?;
        let parsed = super::ProtoHeader::parse(header).map_err(std::io::Error::other)?;
        let mut reply = vec![0u8; parsed.size as usize];
        stream.read_exact(&mut reply).await?;
        Ok(parse_reply(&reply))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("info from {addr}"))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_in_order() {
        assert_eq!(
            parse_request(b"node\nbuild\n\npeers-clear-std\n"),
            Ok(vec!["node", "build", "peers-clear-std"])
        );
        assert!(parse_request(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn reply_lines() {
        let body = reply([("node", "A1".to_owned()), ("build", "8.1.0.0".to_owned())]);
        assert_eq!(body, b"node\tA1\nbuild\t8.1.0.0\n");
    }
}
