//! Errors as one line with their causes: hyper's and tonic's errors say only `transport
//! error` or `client error (Connect)` at the top, and the reason is in their sources.

/// `error` and each of its sources not already in the text, joined with `: `.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Top(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_top_error() {
        let e = Top(std::io::Error::other("connection reset"));
        assert_eq!(describe(&e), "transport error: connection reset");
    }
}
