//! Typed parameter values: size, time, bool, integer, float, enum, array, hash.
//!
//! The forms are Fluentd's; the quirks are not. Fluentd finds a size suffix anywhere in the
//! string (`1.5m` becomes 5 MiB), reads `100ms` as 100 minutes, and turns anything unreadable
//! into 0 or nil without a word. Here a value is read whole: a number, then an optional unit,
//! and anything else is an error that names the parameter and the value.

/// Reads a size in bytes: `1024`, `8m`, `1.5m` (1.5 MiB), `2k`, `10KB`, `1g`, `1_000`.
///
/// Units are binary and case-insensitive: `k`/`kb`/`kib`, `m`/`mb`/`mib`, `g`/`gb`/`gib`,
/// `t`/`tb`/`tib`; `b` is bytes. A fraction is allowed and the result rounded down to whole bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, unit) = split_number(t)?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    if num.starts_with('-') {
        return None;
    }
    if num.contains('.') {
        let v: f64 = num.parse().ok()?;
        let bytes = (v * mult as f64).floor();
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return None;
        }
        Some(bytes as u64)
    } else {
        let v: u64 = num.trim_start_matches('+').parse().ok()?;
        v.checked_mul(mult)
    }
}

/// Reads a duration in seconds: `10`, `0.5`, `10s`, `10sec`, `2m`, `3h`, `4d`, `100ms`, `1.5h`.
///
/// Returns the seconds and whether the value had no unit (Fluentd keeps unit-less values as
/// floats and prints them as such, e.g. `0.0`, which error messages reproduce).
/// `M` (month or minute?) and other units are refused rather than guessed.
pub fn parse_time(s: &str) -> Option<(f64, bool)> {
    let t = s.trim();
    let (num, unit) = split_number(t)?;
    let mult = match unit {
        "" => 1.0,
        "ms" | "msec" => 0.001,
        "s" | "S" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "H" | "hr" | "hour" | "hours" => 3600.0,
        "d" | "D" | "day" | "days" => 86400.0,
        _ => return None,
    };
    let v: f64 = num.parse().ok()?;
    let secs = v * mult;
    secs.is_finite().then_some((secs, unit.is_empty()))
}

/// Reads a bool as Fluentd does: `true`/`yes`, `false`/`no`, and the empty value is `true`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" | "yes" | "" => Some(true),
        "false" | "no" => Some(false),
        _ => None,
    }
}

/// Reads a whole number (`-5`, `1_000`).
pub fn parse_integer(s: &str) -> Option<i64> {
    let (num, unit) = split_number(s.trim())?;
    if !unit.is_empty() || num.contains('.') {
        return None;
    }
    num.trim_start_matches('+').parse().ok()
}

/// Reads a floating-point number.
pub fn parse_float(s: &str) -> Option<f64> {
    let (num, unit) = split_number(s.trim())?;
    if !unit.is_empty() {
        return None;
    }
    num.parse().ok().filter(|v: &f64| v.is_finite())
}

/// Reads an array: JSON (`["a","b"]`) or comma-separated (`a, b`). JSON elements that are not
/// strings are kept as their JSON text.
pub fn parse_array(s: &str) -> Result<Vec<String>, String> {
    let t = s.trim();
    if t.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| format!("invalid JSON array: {e}"))?;
        let arr = v.as_array().ok_or("expected a JSON array")?;
        return Ok(arr
            .iter()
            .map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect());
    }
    if t.is_empty() {
        return Ok(Vec::new());
    }
    Ok(t.split(',').map(|p| p.trim().to_string()).collect())
}

/// Reads a hash: JSON (`{"k":"v"}`) or `k1:v1,k2:v2`. Order is kept.
pub fn parse_hash(s: &str) -> Result<Vec<(String, String)>, String> {
    let t = s.trim();
    if t.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| format!("invalid JSON object: {e}"))?;
        let obj = v.as_object().ok_or("expected a JSON object")?;
        return Ok(obj
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect());
    }
    if t.is_empty() {
        return Ok(Vec::new());
    }
    t.split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once(':')
                .ok_or_else(|| format!("expected key:value, got {:?}", pair.trim()))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Formats a float the way Ruby prints one (`0.0`, `-1.0`, `0.5`), for messages that quote
/// Fluentd.
pub fn ruby_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Splits `s` into a number (sign, digits, one dot, `_` between digits removed) and the rest.
fn split_number(s: &str) -> Option<(String, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut num = String::new();
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        num.push(b[i] as char);
        i += 1;
    }
    let mut digits = 0;
    let mut dot = false;
    while i < b.len() {
        match b[i] {
            b'0'..=b'9' => {
                num.push(b[i] as char);
                digits += 1;
            }
            b'_' if digits > 0 && i + 1 < b.len() && b[i + 1].is_ascii_digit() => {}
            b'.' if !dot && i + 1 < b.len() && b[i + 1].is_ascii_digit() => {
                dot = true;
                num.push('.');
            }
            _ => break,
        }
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    Some((num, s[i..].trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        // Scenario 110 with sluice's corrections.
        for (s, v) in [
            ("2k", 2048),
            ("2K", 2048),
            ("3m", 3145728),
            ("4g", 4294967296),
            ("5t", 5497558138880),
            ("6", 6),
            ("1kb", 1024),
            ("10KB", 10240),
            ("2mb", 2097152),
            ("1.5m", 1572864),
            ("1.5", 1),
            ("1_000", 1000),
        ] {
            assert_eq!(parse_size(s), Some(v), "{s}");
        }
        for s in ["abc", "0x10", "", "-1", "5x", "1.5.5m", "k"] {
            assert_eq!(parse_size(s), None, "{s}");
        }
    }

    #[test]
    fn times() {
        // Scenario 111 with sluice's corrections.
        for (s, v) in [
            ("10s", 10.0),
            ("10sec", 10.0),
            ("2m", 120.0),
            ("3h", 10800.0),
            ("4d", 345600.0),
            ("60", 60.0),
            ("0.5", 0.5),
            ("1.5h", 5400.0),
            ("100ms", 0.1),
            ("10S", 10.0),
            ("-1", -1.0),
        ] {
            assert_eq!(parse_time(s).map(|t| t.0), Some(v), "{s}");
        }
        for s in ["abc", "1w", "1M", "", "10 parsecs"] {
            assert_eq!(parse_time(s), None, "{s}");
        }
        assert_eq!(parse_time("60"), Some((60.0, true)));
        assert_eq!(parse_time("60s"), Some((60.0, false)));
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("yes"), Some(true));
        assert_eq!(parse_bool(""), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("no"), Some(false));
        assert_eq!(parse_bool("hoge"), None);
    }

    #[test]
    fn arrays_and_hashes() {
        assert_eq!(parse_array("tag, time").unwrap(), vec!["tag", "time"]);
        assert_eq!(
            parse_array("[\"tag\",\"time\"]").unwrap(),
            vec!["tag", "time"]
        );
        assert_eq!(parse_array("[1,\"a\"]").unwrap(), vec!["1", "a"]);
        assert!(parse_array("").unwrap().is_empty());
        assert!(parse_array("[").is_err());
        assert_eq!(
            parse_hash("a:1, b:x:y").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "x:y".into())]
        );
        assert_eq!(
            parse_hash("{\"k\":2}").unwrap(),
            vec![("k".into(), "2".into())]
        );
        assert!(parse_hash("novalue").is_err());
    }

    #[test]
    fn numbers_and_ruby_floats() {
        assert_eq!(parse_integer("-5"), Some(-5));
        assert_eq!(parse_integer("1_000"), Some(1000));
        assert_eq!(parse_integer("1.5"), None);
        assert_eq!(parse_float("0.8"), Some(0.8));
        assert_eq!(parse_float("x"), None);
        assert_eq!(ruby_float(0.0), "0.0");
        assert_eq!(ruby_float(-1.0), "-1.0");
        assert_eq!(ruby_float(0.5), "0.5");
    }
}
