//! The few Ruby expressions accepted inside `"#{...}"`.
//!
//! Fluentd evaluates any Ruby code embedded in double-quoted strings. sluice has no Ruby; it
//! accepts the three forms that real configs use and rejects everything else with a config
//! error, so nothing is silently left unexpanded:
//!
//! - `ENV['NAME']` and `ENV["NAME"]`: the environment variable, or empty when unset
//!   (Ruby's `nil.to_s`);
//! - `Socket.gethostname`: the host name.

/// Evaluates one embedded expression, or says why it cannot be.
pub fn evaluate(code: &str) -> Result<String, String> {
    let c = code.trim();
    if c == "Socket.gethostname" {
        return Ok(crate::hostname());
    }
    if let Some(inner) = c.strip_prefix("ENV[").and_then(|r| r.strip_suffix(']')) {
        let inner = inner.trim();
        let name = inner
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| inner.strip_prefix('"').and_then(|r| r.strip_suffix('"')));
        if let Some(name) = name {
            return Ok(std::env::var(name).unwrap_or_default());
        }
    }
    Err(format!(
        "embedded Ruby code is not supported: #{{{code}}} (supported: #{{ENV['NAME']}}, #{{ENV[\"NAME\"]}}, #{{Socket.gethostname}})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_both_quotes() {
        std::env::set_var("SLUICE_EMBEDDED_TEST", "v1");
        assert_eq!(evaluate("ENV['SLUICE_EMBEDDED_TEST']").unwrap(), "v1");
        assert_eq!(evaluate("ENV[\"SLUICE_EMBEDDED_TEST\"]").unwrap(), "v1");
        assert_eq!(evaluate("ENV['SLUICE_SURELY_UNSET_VAR']").unwrap(), "");
    }

    #[test]
    fn hostname_and_rejections() {
        assert_eq!(evaluate("Socket.gethostname").unwrap(), crate::hostname());
        let e = evaluate("1 + 1").unwrap_err();
        assert!(e.contains("not supported: #{1 + 1}"), "{e}");
        assert!(evaluate("ENV[NAME]").is_err());
    }
}
