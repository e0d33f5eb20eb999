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
