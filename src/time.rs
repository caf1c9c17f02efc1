//! Time zones and clocks.
//!
//! [`Zone`] is what `timekey_zone`, `localtime`/`utc` and formatters use: a fixed offset or a
//! tz-database zone (DST-aware per instant). [`Clock`] makes "now" injectable, so timekey
//! flushes, flush intervals and retry schedules are tested with a fake clock instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::event::EventTime;

/// A time zone as Fluentd's `timekey_zone` (and sluice's extensions) accept it.
#[derive(Debug, Clone)]
pub enum Zone {
    /// A fixed offset in seconds east of UTC (`+0900`, `-03:00`).
    Fixed(i32),
    /// A tz-database zone (`Asia/Tokyo`, `Etc/UTC`, `UTC`).
    Named(jiff::tz::TimeZone),
}

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone::Fixed(0)
    }

    /// The process's local offset now, as a fixed offset — Fluentd's default `timekey_zone`
    /// (not DST-aware, as in Fluentd).
    pub fn local_fixed() -> Zone {
        let offset = jiff::Zoned::now().offset().seconds();
        Zone::Fixed(offset)
    }

    /// The process's local zone, DST-aware (what Ruby's `Time#localtime` uses for formatting).
    pub fn local() -> Zone {
        Zone::Named(jiff::tz::TimeZone::system())
    }

    /// Parses `+HH`, `+HHMM`, `+HH:MM` (and `-`), or a zone name the tz database knows
    /// (`UTC` and `Z` included). Anything else: `Unsupported timezone '<s>'`.
    pub fn parse(s: &str) -> Result<Zone, String> {
        let err = || format!("Unsupported timezone '{s}'");
        let t = s.trim();
        if t == "Z" {
            return Ok(Zone::utc());
        }
        if let Some(rest) = t
            .strip_prefix('+')
            .map(|r| (1, r))
            .or_else(|| t.strip_prefix('-').map(|r| (-1, r)))
        {
            let (sign, r) = rest;
            let digits: String = r.chars().filter(|c| *c != ':').collect();
            let colon_ok = match r.find(':') {
                None => true,
                Some(i) => i == 2 && r.len() == 5,
            };
            if !colon_ok || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(err());
            }
            let (h, m) = match digits.len() {
                2 => (digits[..2].parse::<i32>().unwrap(), 0),
                4 => (
                    digits[..2].parse::<i32>().unwrap(),
                    digits[2..].parse::<i32>().unwrap(),
                ),
                _ => return Err(err()),
            };
            if h > 23 || m > 59 {
                return Err(err());
            }
            return Ok(Zone::Fixed(sign * (h * 3600 + m * 60)));
        }
        if t.is_empty()
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
        {
            return Err(err());
        }
        jiff::tz::TimeZone::get(t)
            .map(Zone::Named)
            .map_err(|_| err())
    }

    /// Offset in seconds east of UTC at the instant `sec`.
    pub fn offset_at(&self, sec: i64) -> i32 {
        match self {
            Zone::Fixed(o) => *o,
            Zone::Named(tz) => match jiff::Timestamp::from_second(sec) {
                Ok(ts) => tz.to_offset(ts).seconds(),
                Err(_) => 0,
            },
        }
    }

    /// The civil date-time of `t` in this zone.
    pub fn civil(&self, t: EventTime) -> jiff::Zoned {
        let ts = jiff::Timestamp::new(t.sec, t.nsec as i32).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        match self {
            Zone::Fixed(o) => {
                let off = jiff::tz::Offset::from_seconds(*o).unwrap_or(jiff::tz::Offset::UTC);
                ts.to_zoned(jiff::tz::TimeZone::fixed(off))
            }
            Zone::Named(tz) => ts.to_zoned(tz.clone()),
        }
    }

    /// Formats `t` with a strftime pattern in this zone (`%N` gives nanoseconds, as Ruby's).
    pub fn strftime(&self, t: EventTime, fmt: &str) -> String {
        let z = self.civil(t);
        let fmt = fmt.replace("%N", "%9f").replace("%L", "%3f");
        jiff::fmt::strtime::format(fmt.as_str(), &z).unwrap_or_else(|_| fmt.to_string())
    }
}

/// Formats an offset as `+HH:MM` (Ruby's `%:z`) or `Z`.
pub fn offset_text(offset: i32, z_for_utc: bool) -> String {
    if offset == 0 && z_for_utc {
        return "Z".into();
    }
    let sign = if offset < 0 { '-' } else { '+' };
    let a = offset.abs();
    format!("{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
}

/// A source of "now". Production uses [`SystemClock`]; tests use [`FakeClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> EventTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EventTime {
        EventTime::now()
    }
}

/// A clock that moves only when told to (nanosecond resolution).
#[derive(Debug, Default)]
pub struct FakeClock {
    nanos: AtomicI64,
}

impl FakeClock {
    /// A fake clock set to `sec` seconds since the epoch.
    pub fn at(sec: i64) -> Arc<FakeClock> {
        Arc::new(FakeClock {
            nanos: AtomicI64::new(sec * 1_000_000_000),
        })
    }

    /// Moves the clock forward by `secs` (fractions allowed).
    pub fn advance(&self, secs: f64) {
        self.nanos
            .fetch_add((secs * 1e9).round() as i64, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, t: EventTime) {
        self.nanos
            .store(t.sec * 1_000_000_000 + t.nsec as i64, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> EventTime {
        let n = self.nanos.load(Ordering::SeqCst);
        EventTime::new(
            n.div_euclid(1_000_000_000),
            n.rem_euclid(1_000_000_000) as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_scenario_22() {
        for ok in [
            "Etc/UTC",
            "+09:00",
            "America/Argentina/Buenos_Aires",
            "UTC",
            "Z",
            "+0900",
            "-03",
            "Asia/Tokyo",
        ] {
            assert!(Zone::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["JST", "+9", "Mars/Olympus", "", "+25:00", "+09:0", "../etc"] {
            assert_eq!(
                Zone::parse(bad).unwrap_err(),
                format!("Unsupported timezone '{bad}'")
            );
        }
        assert_eq!(
            Zone::parse("-03:30").unwrap().offset_at(0),
            -(3 * 3600 + 1800)
        );
    }

    #[test]
    fn named_zones_follow_dst() {
        let z = Zone::parse("Europe/Berlin").unwrap();
        assert_eq!(z.offset_at(1_704_067_200), 3600); // 2024-01-01
        assert_eq!(z.offset_at(1_719_792_000), 7200); // 2024-07-01
    }

    #[test]
    fn strftime_with_nanos() {
        let t = EventTime::new(1475539089, 5);
        assert_eq!(
            Zone::utc().strftime(t, "%Y-%m-%d %H:%M:%S.%N %z"),
            "2016-10-03 23:58:09.000000005 +0000"
        );
        assert_eq!(offset_text(0, true), "Z");
        assert_eq!(offset_text(-12600, false), "-03:30");
    }

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::at(100);
        assert_eq!(c.now(), EventTime::new(100, 0));
        c.advance(1.5);
        assert_eq!(c.now(), EventTime::new(101, 500_000_000));
    }
}

/// Wall-clock time that follows tokio's clock: the system time at creation plus tokio's elapsed
/// time. Under `tokio::time::pause()` it moves only when tokio's virtual time does, so the real
/// flush and retry loops can be tested on virtual time, deterministically and without waiting.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: EventTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base` now.
    pub fn starting_at(base: EventTime) -> Arc<TokioClock> {
        Arc::new(TokioClock {
            base,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> EventTime {
        let e = self.start.elapsed();
        let nanos = self.base.nsec as u128 + e.subsec_nanos() as u128;
        EventTime::new(
            self.base.sec + e.as_secs() as i64 + (nanos / 1_000_000_000) as i64,
            (nanos % 1_000_000_000) as u32,
        )
    }
}

/// How long from `now` until `t` (zero when `t` is past).
pub fn until(now: EventTime, t: EventTime) -> std::time::Duration {
    let diff = (t.sec - now.sec) as i128 * 1_000_000_000 + (t.nsec as i128 - now.nsec as i128);
    if diff <= 0 {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_nanos(diff.min(u64::MAX as i128) as u64)
    }
}
