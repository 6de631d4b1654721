//! Sizes in Kubernetes-style quantities, as Dapr reads `--max-body-size` and size
//! metadata: `4Mi`, `512Ki`, `1Gi`, `100` (bytes); `K`, `M`, `G` are powers of ten.

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {text:?}: {reason}")]
pub struct SizeError {
    pub text: String,
    pub reason: &'static str,
}

/// The number of bytes `text` stands for (saturating at `usize::MAX`).
pub fn parse(text: &str) -> Result<usize, SizeError> {
    let text = text.trim();
    let err = |reason| SizeError {
        text: text.to_string(),
        reason,
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| err("expected a number with an optional unit such as 4Mi"))?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(err("the unit must be Ki, Mi, Gi (or K, M, G)")),
    };
    Ok(usize::try_from(n.saturating_mul(factor)).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_binary_and_decimal_units() {
        assert_eq!(parse("4Mi"), Ok(4 << 20));
        assert_eq!(parse(" 512Ki "), Ok(512 << 10));
        assert_eq!(parse("100"), Ok(100));
        assert_eq!(parse("2K"), Ok(2000));
        assert!(parse("4Xi").is_err());
        assert!(parse("Mi").is_err());
    }
}
