//! Time formatting exactly as Fluentd's Ruby prints it.
//!
//! Two things in Fluentd format times, and sluice must print the same text for both:
//!
//! - file names and other templates: the raw template goes through Ruby's `Time#strftime`
//!   (placeholders, `%Y%m%d` in out_file paths);
//! - formatters and `<inject>`: `Fluent::TimeFormatter`, i.e. `Time#iso8601` by default or
//!   `strftime(time_format)`, in local time, UTC or a given zone.
//!
//! [`ruby_strftime`] is a re-implementation of Ruby's `strftime` semantics (flags `-_0^#`,
//! widths, `%:z`/`%::z`/`%:::z`, `%N`/`%3N`/`%L`, `%E`/`%O` modifiers, composites such as `%c`,
//! `%v`, `%F`). Like Ruby — and unlike a strict formatter — it never fails: a sequence it does
//! not know (`%Q`, `%+`, `%` at the end) is copied to the output as written. This matters
//! because templates are user text: `%` may appear in a path for reasons that have nothing to
//! do with time.
//!
//! [`TimeFormatter`] is the configured formatter of a `<format>` or `<inject>` section.

use std::sync::Mutex;

use crate::config::ConfigError;
use crate::event::EventTime;
use crate::time::{offset_text, Zone};

/// The broken-down time a format is applied to: the instant, the UTC offset it is shown in,
/// and how the zone is named.
#[derive(Debug, Clone, Copy)]
pub struct TimeView<'a> {
    /// The instant.
    pub time: EventTime,
    /// Seconds east of UTC used for the civil fields and `%z`.
    pub offset: i32,
    /// Whether the time is a UTC time in Ruby's sense (`Time#utc`): `%z` is `+0000`, `%Z` is
    /// `UTC` and `iso8601` ends in `Z`.
    pub gmt: bool,
    /// What `%Z` prints when not `gmt` (empty for fixed offsets, as Ruby's
    /// `Time#localtime("+09:00")` has no zone name).
    pub abbr: &'a str,
}

/// Broken-down civil fields of a [`TimeView`].
struct Tm<'a> {
    year: i64,
    mon: i64,
    mday: i64,
    hour: i64,
    min: i64,
    sec: i64,
    wday: i64,
    yday: i64,
    iso_year: i64,
    iso_week: i64,
    nsec: u32,
    epoch: i64,
    offset: i32,
    gmt: bool,
    abbr: &'a str,
}

impl<'a> Tm<'a> {
    fn new(v: &TimeView<'a>) -> Tm<'a> {
        let ts = jiff::Timestamp::from_second(v.time.sec).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let off = jiff::tz::Offset::from_seconds(v.offset).unwrap_or(jiff::tz::Offset::UTC);
        let dt = off.to_datetime(ts);
        let iso = dt.date().iso_week_date();
        Tm {
            year: dt.year() as i64,
            mon: dt.month() as i64,
            mday: dt.day() as i64,
            hour: dt.hour() as i64,
            min: dt.minute() as i64,
            sec: dt.second() as i64,
            wday: dt.weekday().to_sunday_zero_offset() as i64,
            yday: dt.day_of_year() as i64,
            iso_year: iso.year() as i64,
            iso_week: iso.week() as i64,
            nsec: v.time.nsec,
            epoch: v.time.sec,
            offset: if v.gmt { 0 } else { v.offset },
            gmt: v.gmt,
            abbr: v.abbr,
        }
    }
}

/// Widths beyond this are clamped, so a typo such as `%99999999d` in a config cannot make
/// every formatted line gigabytes long. (Ruby would try to allocate it.)
const MAX_WIDTH: i64 = 1024;

/// Flags and width of one conversion, as Ruby's strftime collects them.
#[derive(Clone, Copy)]
struct Spec {
    /// `-`: no padding.
    left: bool,
    /// `^`: upper-case the result.
    upper: bool,
    /// `#`: change case (upper for names, lower for `%p`/`%Z`).
    chcase: bool,
    /// Lower-case the result (set by conversions, not by a flag).
    lower: bool,
    /// `_` (space) or `0` (zero) padding; `None` = the conversion's default.
    padding: Option<u8>,
    /// Width; `-1` when none was given.
    precision: i64,
    /// Number of `:` before `z`.
    colons: usize,
}

impl Spec {
    const NONE: Spec = Spec {
        left: false,
        upper: false,
        chcase: false,
        lower: false,
        padding: None,
        precision: -1,
        colons: 0,
    };
}

/// Formats `view` with the Ruby strftime pattern `fmt`.
///
/// Exists because Fluentd's file names, timekey placeholders and time formats are Ruby
/// strftime patterns, and sluice must produce the same bytes for the same config. Unknown
/// sequences are copied literally (as Ruby does); formatting never fails.
pub fn ruby_strftime(fmt: &str, view: &TimeView<'_>) -> String {
    let tm = Tm::new(view);
    let mut out = String::with_capacity(fmt.len() + 16);
    format_into(fmt, &tm, &mut out);
    out
}

/// Whether `fmt` holds a sub-second conversion (`%N`, `%3N`, `%L`), so that two times of the
/// same second may format differently.
pub fn has_subsecond(fmt: &str) -> bool {
    // Cheap and conservative: a `%`, then flags/width, then N or L.
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let mut j = i + 1;
            if j < b.len() && b[j] == b'%' {
                i = j + 1;
                continue;
            }
            while j < b.len() && (b"-_0^#:EO".contains(&b[j]) || b[j].is_ascii_digit()) {
                j += 1;
            }
            if j < b.len() && (b[j] == b'N' || b[j] == b'L') {
                return true;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    false
}

fn format_into(fmt: &str, tm: &Tm<'_>, out: &mut String) {
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Copy literal text up to the next '%'.
        let next = match fmt[i..].find('%') {
            Some(k) => i + k,
            None => {
                out.push_str(&fmt[i..]);
                return;
            }
        };
        out.push_str(&fmt[i..next]);
        let start = next;
        let mut p = next;
        let mut spec = Spec::NONE;
        // Parse flags, width, colons and modifiers, then the conversion.
        let end = loop {
            p += 1;
            if p >= b.len() {
                // A lone '%' (or flags) at the end: copied as written.
                out.push_str(&fmt[start..]);
                return;
            }
            let c = b[p];
            match c {
                b'-' | b'^' | b'#' | b'_' => {
                    if spec.precision > 0 {
                        break unknown(fmt, start, p, out);
                    }
                    match c {
                        b'-' => {
                            spec.left = true;
                            spec.padding = None;
                            spec.precision = 0;
                        }
                        b'^' => spec.upper = true,
                        b'#' => spec.chcase = true,
                        _ => spec.padding = Some(b' '),
                    }
                }
                b':' => {
                    let mut colons = 1;
                    loop {
                        match b.get(p + colons) {
                            Some(b'z') => break,
                            Some(b':') if colons < 3 => colons += 1,
                            _ => {
                                colons = 0;
                                break;
                            }
                        }
                    }
                    if colons == 0 {
                        break unknown(fmt, start, p, out);
                    }
                    spec.colons = colons;
                    p += colons - 1;
                }
                b'0'..=b'9' => {
                    if c == b'0' {
                        spec.padding = Some(b'0');
                    }
                    let mut q = p;
                    let mut v: i64 = 0;
                    let mut overflow = false;
                    while q < b.len() && b[q].is_ascii_digit() {
                        v = v * 10 + (b[q] - b'0') as i64;
                        if v > i32::MAX as i64 {
                            overflow = true;
                        }
                        q += 1;
                    }
                    if overflow {
                        break unknown(fmt, start, q - 1, out);
                    }
                    spec.precision = v;
                    p = q - 1;
                }
                b'E' => {
                    if !b.get(p + 1).is_some_and(|n| b"cCxXyY".contains(n)) {
                        break unknown(fmt, start, p, out);
                    }
                }
                b'O' => {
                    if !b.get(p + 1).is_some_and(|n| b"deHkIlmMSuUVwWy".contains(n)) {
                        break unknown(fmt, start, p, out);
                    }
                }
                _ => {
                    if !conversion(c, spec, tm, out) {
                        break unknown(fmt, start, p, out);
                    }
                    break p + 1;
                }
            }
        };
        i = end;
    }
}

/// Copies an unknown sequence (from `%` through the character at `p`) literally and returns
/// where formatting continues.
fn unknown(fmt: &str, start: usize, p: usize, out: &mut String) -> usize {
    // `p` may point into a multi-byte character: copy through its end.
    let mut end = p + 1;
    while end < fmt.len() && !fmt.is_char_boundary(end) {
        end += 1;
    }
    out.push_str(&fmt[start..end]);
    end
}

/// Applies `^`/`#`-derived case changes to `s`.
fn case_conv(s: &mut str, spec: &Spec) {
    match (spec.upper, spec.lower) {
        (true, false) => s.make_ascii_uppercase(),
        (false, true) => s.make_ascii_lowercase(),
        _ => {}
    }
}

/// Left-pads `text` to the width, with the given padding or spaces, then appends it.
fn push_text(text: &str, spec: &Spec, out: &mut String) {
    if text.is_empty() {
        return;
    }
    let mut t = text.to_string();
    case_conv(&mut t, spec);
    let len = t.len() as i64;
    if !spec.left && spec.precision > len {
        let pad = spec.padding.unwrap_or(b' ') as char;
        for _ in 0..(spec.precision.min(MAX_WIDTH) - len) {
            out.push(pad);
        }
    }
    out.push_str(&t);
}

/// A number, padded as C's `%0*ld` / `%*ld` would with Ruby's width rules.
fn push_num(def_pad: u8, def_prec: i64, v: i64, spec: &Spec, out: &mut String) {
    let width = if spec.left {
        1
    } else if spec.precision <= 0 {
        def_prec
    } else {
        spec.precision.min(MAX_WIDTH)
    };
    let zero = spec.padding == Some(b'0') || (spec.padding.is_none() && def_pad == b'0');
    let digits = v.unsigned_abs().to_string();
    let sign = if v < 0 { "-" } else { "" };
    let len = (digits.len() + sign.len()) as i64;
    let fill = (width - len).max(0) as usize;
    if zero {
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(sign);
    }
    out.push_str(&digits);
}

/// A composite conversion (`%c`, `%F`, …): formatted with fresh flags, then case-converted
/// and padded as a whole.
fn push_composite(fmt: &str, spec: &Spec, tm: &Tm<'_>, out: &mut String) {
    let mut s = String::new();
    format_into(fmt, tm, &mut s);
    case_conv(&mut s, spec);
    let len = s.len() as i64;
    if spec.precision > len {
        let pad = spec.padding.unwrap_or(b' ') as char;
        for _ in 0..(spec.precision.min(MAX_WIDTH) - len) {
            out.push(pad);
        }
    }
    out.push_str(&s);
}

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Writes one conversion; false when `c` is not one Ruby knows.
fn conversion(c: u8, mut spec: Spec, tm: &Tm<'_>, out: &mut String) -> bool {
    let hour12 = match tm.hour {
        0 => 12,
        h if h > 12 => h - 12,
        h => h,
    };
    match c {
        b'%' => push_text_raw("%", &spec, out),
        b'n' => push_text_raw("\n", &spec, out),
        b't' => push_text_raw("\t", &spec, out),
        b'a' | b'A' | b'b' | b'B' | b'h' => {
            if spec.chcase {
                spec.chcase = false;
                spec.lower = false;
                spec.upper = true;
            }
            let name = match c {
                b'a' => &DAYS[tm.wday as usize][..3],
                b'A' => DAYS[tm.wday as usize],
                b'B' => MONTHS[(tm.mon - 1) as usize],
                _ => &MONTHS[(tm.mon - 1) as usize][..3],
            };
            push_text(name, &spec, out);
        }
        b'p' | b'P' => {
            if (c == b'p' && spec.chcase) || (c == b'P' && !(spec.chcase || spec.upper)) {
                spec.upper = false;
                spec.chcase = false;
                spec.lower = true;
            }
            push_text(if tm.hour < 12 { "AM" } else { "PM" }, &spec, out);
        }
        b'Z' => {
            if spec.chcase {
                spec.upper = false;
                spec.chcase = false;
                spec.lower = true;
            }
            push_text(if tm.gmt { "UTC" } else { tm.abbr }, &spec, out);
        }
        b'c' => push_composite("%a %b %e %H:%M:%S %Y", &spec, tm, out),
        b'x' | b'D' => push_composite("%m/%d/%y", &spec, tm, out),
        b'X' | b'T' => push_composite("%H:%M:%S", &spec, tm, out),
        b'r' => push_composite("%I:%M:%S %p", &spec, tm, out),
        b'R' => push_composite("%H:%M", &spec, tm, out),
        b'v' => push_composite("%e-%^b-%4Y", &spec, tm, out),
        b'F' => push_composite("%Y-%m-%d", &spec, tm, out),
        b'd' => push_num(b'0', 2, tm.mday, &spec, out),
        b'e' => push_num(b' ', 2, tm.mday, &spec, out),
        b'H' => push_num(b'0', 2, tm.hour, &spec, out),
        b'k' => push_num(b' ', 2, tm.hour, &spec, out),
        b'I' => push_num(b'0', 2, hour12, &spec, out),
        b'l' => push_num(b' ', 2, hour12, &spec, out),
        b'j' => push_num(b'0', 3, tm.yday, &spec, out),
        b'm' => push_num(b'0', 2, tm.mon, &spec, out),
        b'M' => push_num(b'0', 2, tm.min, &spec, out),
        b'S' => push_num(b'0', 2, tm.sec, &spec, out),
        b's' => push_num(b'0', 1, tm.epoch, &spec, out),
        b'w' => push_num(b'0', 1, tm.wday, &spec, out),
        b'u' => push_num(b'0', 1, if tm.wday == 0 { 7 } else { tm.wday }, &spec, out),
        b'U' => push_num(b'0', 2, (tm.yday - 1 + 7 - tm.wday) / 7, &spec, out),
        b'W' => {
            let wd = (tm.wday + 6) % 7;
            push_num(b'0', 2, (tm.yday - 1 + 7 - wd) / 7, &spec, out)
        }
        b'V' => push_num(b'0', 2, tm.iso_week, &spec, out),
        b'y' => push_num(b'0', 2, tm.year.rem_euclid(100), &spec, out),
        b'C' => push_num(b'0', 2, tm.year.div_euclid(100), &spec, out),
        b'Y' => push_num(b'0', if tm.year >= 0 { 4 } else { 5 }, tm.year, &spec, out),
        b'G' => push_num(
            b'0',
            if tm.iso_year >= 0 { 4 } else { 5 },
            tm.iso_year,
            &spec,
            out,
        ),
        b'g' => push_num(b'0', 2, tm.iso_year.rem_euclid(100), &spec, out),
        b'L' | b'N' => {
            let w = if c == b'L' { 3 } else { 9 };
            let prec = if spec.precision <= 0 {
                w
            } else {
                spec.precision.min(MAX_WIDTH)
            };
            if prec > 9 {
                out.push_str(&format!("{:09}", tm.nsec));
                out.extend(std::iter::repeat_n('0', (prec - 9) as usize));
            } else {
                let v = tm.nsec as u64 / 10u64.pow((9 - prec) as u32);
                out.push_str(&format!("{:0width$}", v, width = prec as usize));
            }
        }
        b'z' => push_offset(tm.offset, &spec, out),
        _ => return false,
    }
    true
}

/// `%`, `%n`, `%t`: padded but never case-converted.
fn push_text_raw(text: &str, spec: &Spec, out: &mut String) {
    if !spec.left && spec.precision > 1 {
        let pad = spec.padding.unwrap_or(b' ') as char;
        for _ in 0..(spec.precision.min(MAX_WIDTH) - 1) {
            out.push(pad);
        }
    }
    out.push_str(text);
}

/// `%z`, `%:z`, `%::z`, `%:::z` with Ruby's width rules (the width applies to the hours).
fn push_offset(offset: i32, spec: &Spec, out: &mut String) {
    let neg = offset < 0;
    let off = offset.unsigned_abs() as i64;
    let p = spec.precision;
    let hour_digits = match spec.colons {
        0 => {
            if p <= 5 {
                2
            } else {
                p - 3
            }
        }
        1 => {
            if p <= 6 {
                2
            } else {
                p - 4
            }
        }
        2 => {
            if p <= 9 {
                2
            } else {
                p - 7
            }
        }
        _ => {
            if off % 3600 == 0 {
                if p <= 3 {
                    2
                } else {
                    p - 1
                }
            } else if off % 60 == 0 {
                if p <= 6 {
                    2
                } else {
                    p - 4
                }
            } else if p <= 9 {
                2
            } else {
                p - 7
            }
        }
    }
    .min(MAX_WIDTH);
    let sign = if neg { '-' } else { '+' };
    let hours = (off / 3600).to_string();
    if spec.padding == Some(b' ') {
        // "%+*ld": spaces, then the sign next to the digits.
        let body = format!("{sign}{hours}");
        let width = (hour_digits + 1) as usize;
        out.extend(std::iter::repeat_n(' ', width.saturating_sub(body.len())));
        out.push_str(&body);
    } else {
        out.push(sign);
        out.extend(std::iter::repeat_n(
            '0',
            (hour_digits as usize).saturating_sub(hours.len()),
        ));
        out.push_str(&hours);
    }
    let rest = off % 3600;
    if spec.colons == 3 && rest == 0 {
        return;
    }
    if spec.colons >= 1 {
        out.push(':');
    }
    out.push_str(&format!("{:02}", rest / 60));
    let secs = rest % 60;
    if spec.colons == 3 && secs == 0 {
        return;
    }
    if spec.colons >= 2 {
        out.push(':');
        out.push_str(&format!("{secs:02}"));
    }
}

/// Which zone a [`TimeFormatter`] shows times in, following Fluentd's `localtime`/`utc`/
/// `timezone` parameters.
#[derive(Debug, Clone)]
pub enum ZoneMode {
    /// The process's local zone (DST-aware), as Ruby's `Time.at(t)` (the default).
    Local(Zone),
    /// UTC as Ruby's `Time#utc`: `%Z` is `UTC` and ISO-8601 ends in `Z`.
    Utc,
    /// A configured `timezone`: Ruby's `Time#localtime(offset)`; ISO-8601 ends in `+00:00`
    /// even for a zero offset, and `%Z` is empty.
    Fixed(Zone),
}

impl ZoneMode {
    /// The local zone of this process.
    pub fn local() -> ZoneMode {
        ZoneMode::Local(Zone::local())
    }

    /// The view of `t` in this zone.
    pub fn view(&self, t: EventTime) -> (i32, bool, String) {
        match self {
            ZoneMode::Utc => (0, true, String::new()),
            ZoneMode::Fixed(z) => (z.offset_at(t.sec), false, String::new()),
            ZoneMode::Local(z) => {
                let off = z.offset_at(t.sec);
                let abbr = match z {
                    Zone::Named(tz) => jiff::Timestamp::from_second(t.sec)
                        .map(|ts| tz.to_offset_info(ts).abbreviation().to_string())
                        .unwrap_or_default(),
                    Zone::Fixed(_) => String::new(),
                };
                (off, false, abbr)
            }
        }
    }

    /// Formats `t` with a Ruby strftime pattern in this zone.
    pub fn strftime(&self, t: EventTime, fmt: &str) -> String {
        let (offset, gmt, abbr) = self.view(t);
        ruby_strftime(
            fmt,
            &TimeView {
                time: t,
                offset,
                gmt,
                abbr: &abbr,
            },
        )
    }

    /// Ruby's `Time#iso8601` (no fraction): `2016-10-03T23:58:09+00:00`, or `…Z` in UTC.
    pub fn iso8601(&self, t: EventTime) -> String {
        let (offset, gmt, _) = self.view(t);
        let mut s = ruby_strftime(
            "%Y-%m-%dT%H:%M:%S",
            &TimeView {
                time: t,
                offset,
                gmt,
                abbr: "",
            },
        );
        s.push_str(&offset_text(offset, gmt));
        s
    }
}

/// How a time is written: Fluentd's `time_type` with its format and zone.
#[derive(Debug, Clone)]
pub enum TimeStyle {
    /// `time_type string`: `time_format` (ISO-8601 when `None`) in a zone.
    Text {
        /// The strftime pattern; `None` = ISO-8601.
        format: Option<String>,
        /// The zone times are shown in.
        zone: ZoneMode,
    },
    /// `time_type unixtime`: whole seconds.
    Unixtime,
    /// `time_type float` (or `mixed`): `seconds.nanoseconds`.
    Float,
}

/// A configured time formatter (Fluentd's `TimeFormatter` / `NumericTimeFormatter`), with a
/// one-entry cache: consecutive events of the same second format once.
#[derive(Debug)]
pub struct TimeFormatter {
    style: TimeStyle,
    cache: Option<Mutex<(i64, String)>>,
}

impl Clone for TimeFormatter {
    fn clone(&self) -> Self {
        TimeFormatter::new(self.style.clone())
    }
}

impl TimeFormatter {
    /// A formatter for `style`.
    pub fn new(style: TimeStyle) -> TimeFormatter {
        let cacheable = match &style {
            TimeStyle::Text { format: None, .. } => true,
            TimeStyle::Text {
                format: Some(f), ..
            } => !has_subsecond(f),
            _ => false,
        };
        TimeFormatter {
            style,
            cache: cacheable.then(|| Mutex::new((i64::MIN, String::new()))),
        }
    }

    /// What this formatter writes.
    pub fn style(&self) -> &TimeStyle {
        &self.style
    }

    /// The text of `t`.
    pub fn format(&self, t: EventTime) -> String {
        if let Some(cache) = &self.cache {
            if let Ok(c) = cache.try_lock() {
                if c.0 == t.sec {
                    return c.1.clone();
                }
            }
            let s = self.format_nocache(t);
            if let Ok(mut c) = cache.try_lock() {
                *c = (t.sec, s.clone());
            }
            return s;
        }
        self.format_nocache(t)
    }

    /// Appends the text of `t` to `out`.
    pub fn write(&self, t: EventTime, out: &mut Vec<u8>) {
        out.extend_from_slice(self.format(t).as_bytes());
    }

    fn format_nocache(&self, t: EventTime) -> String {
        match &self.style {
            TimeStyle::Unixtime => t.sec.to_string(),
            // Fluentd's float formatter meant to print nine digits of nanoseconds; it loses
            // them when fewer than nine are significant. sluice prints all nine.
            TimeStyle::Float => format!("{}.{:09}", t.sec, t.nsec),
            TimeStyle::Text { format: None, zone } => zone.iso8601(t),
            TimeStyle::Text {
                format: Some(f),
                zone,
            } => zone.strftime(t, f),
        }
    }
}

/// Fluentd's time parameters of a section (`time_type`, `time_format`, `localtime`, `utc`,
/// `timezone`), read but not yet turned into a formatter.
#[derive(Debug, Clone)]
pub struct TimeParams {
    /// `time_type`: string, unixtime, float or mixed.
    pub time_type: &'static str,
    /// `time_format`.
    pub time_format: Option<String>,
    /// The zone after Fluentd's `localtime`/`utc`/`timezone` rules.
    pub zone: ZoneMode,
}

impl TimeParams {
    /// The formatter these parameters describe.
    pub fn formatter(&self) -> TimeFormatter {
        TimeFormatter::new(match self.time_type {
            "unixtime" => TimeStyle::Unixtime,
            "float" | "mixed" => TimeStyle::Float,
            _ => TimeStyle::Text {
                format: self.time_format.clone(),
                zone: self.zone.clone(),
            },
        })
    }
}

/// Resolves Fluentd's zone rules: `timezone` wins; otherwise UTC when `localtime false` or
/// `utc true`; otherwise local time. `timezone` must be a zone [`Zone::parse`] accepts.
pub fn zone_mode(
    localtime: bool,
    utc: bool,
    timezone: Option<(&str, &crate::config::Pos)>,
) -> Result<ZoneMode, ConfigError> {
    if let Some((tz, pos)) = timezone {
        let z = Zone::parse(tz).map_err(|e| ConfigError::at(pos, e))?;
        return Ok(ZoneMode::Fixed(z));
    }
    Ok(if localtime && !utc {
        ZoneMode::local()
    } else {
        ZoneMode::Utc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(fmt: &str, sec: i64, nsec: u32) -> String {
        ruby_strftime(
            fmt,
            &TimeView {
                time: EventTime::new(sec, nsec),
                offset: 0,
                gmt: true,
                abbr: "",
            },
        )
    }

    fn at(fmt: &str, sec: i64, offset: i32) -> String {
        ruby_strftime(
            fmt,
            &TimeView {
                time: EventTime::new(sec, 0),
                offset,
                gmt: false,
                abbr: "",
            },
        )
    }

    // 2016-10-03 23:58:09 UTC, a Monday.
    const T: i64 = 1475539089;

    #[test]
    fn common_conversions() {
        assert_eq!(utc("%Y%m%d_%H%M%S", T, 0), "20161003_235809");
        assert_eq!(utc("%F %T", T, 0), "2016-10-03 23:58:09");
        assert_eq!(utc("%a %A %b %B %h", T, 0), "Mon Monday Oct October Oct");
        assert_eq!(utc("%c", T, 0), "Mon Oct  3 23:58:09 2016");
        assert_eq!(
            utc("%x %X %D %R %r", T, 0),
            "10/03/16 23:58:09 10/03/16 23:58 11:58:09 PM"
        );
        assert_eq!(utc("%e|%k|%l|%I|%p|%P", T, 0), " 3|23|11|11|PM|pm");
        assert_eq!(
            utc("%j %U %W %V %G %g %u %w", T, 0),
            "277 40 40 40 2016 16 1 1"
        );
        assert_eq!(utc("%s %C %y", T, 0), "1475539089 20 16");
        assert_eq!(utc("%v", T, 0), " 3-OCT-2016");
        assert_eq!(utc("%z %:z %::z %Z", T, 0), "+0000 +00:00 +00:00:00 UTC");
        assert_eq!(at("%z %:z %:::z %Z|", T, 9 * 3600), "+0900 +09:00 +09 |");
        assert_eq!(
            at("%z %:z %:::z", T, -(3 * 3600 + 1800)),
            "-0330 -03:30 -03:30"
        );
        assert_eq!(at("%z", T, -1800), "-0030");
        assert_eq!(at("%H", T, 9 * 3600), "08");
    }

    #[test]
    fn flags_and_widths() {
        assert_eq!(
            utc("%-d|%_m|%05d|%^a|%#b|%10A|%-10A", T, 0),
            "3|10|00003|MON|OCT|    Monday|Monday"
        );
        assert_eq!(utc("%^B %#p %^P %#Z", T, 0), "OCTOBER pm PM utc");
        assert_eq!(
            utc("%3N|%N|%L|%6N|%12N", T, 123_456_789),
            "123|123456789|123|123456|123456789000"
        );
        assert_eq!(utc("%N", T, 5), "000000005");
        assert_eq!(utc("%Ey %OH %10F", T, 0), "16 23 2016-10-03");
        assert_eq!(utc("%_10z|%10z", T, 0), "      +000|+000000000");
    }

    #[test]
    fn unknown_sequences_are_literal() {
        assert_eq!(utc("%Q %+ %q %f %E %Ox", T, 0), "%Q %+ %q %f %E %Ox");
        assert_eq!(utc("100%", T, 0), "100%");
        assert_eq!(utc("a%-", T, 0), "a%-");
        assert_eq!(utc("%%Y %%%Y", T, 0), "%Y %2016");
        assert_eq!(utc("%é/%Y", T, 0), "%é/2016");
        assert_eq!(utc("%${tag}/%Y", T, 0), "%${tag}/2016");
        assert_eq!(utc("%5-d", T, 0), "%5-d");
        assert_eq!(utc("%:y", T, 0), "%:y");
    }

    #[test]
    fn subsecond_detection() {
        assert!(has_subsecond("%H:%M:%S.%N"));
        assert!(has_subsecond("%3N"));
        assert!(has_subsecond("%L"));
        assert!(!has_subsecond("%%N %Y"));
        assert!(!has_subsecond("%Y-%m-%d"));
    }

    #[test]
    fn formatter_styles() {
        let t = EventTime::new(T, 5);
        let iso_utc = TimeFormatter::new(TimeStyle::Text {
            format: None,
            zone: ZoneMode::Utc,
        });
        assert_eq!(iso_utc.format(t), "2016-10-03T23:58:09Z");
        assert_eq!(iso_utc.format(t), "2016-10-03T23:58:09Z");
        let iso_fixed = TimeFormatter::new(TimeStyle::Text {
            format: None,
            zone: ZoneMode::Fixed(Zone::Fixed(0)),
        });
        assert_eq!(iso_fixed.format(t), "2016-10-03T23:58:09+00:00");
        let tokyo = TimeFormatter::new(TimeStyle::Text {
            format: None,
            zone: ZoneMode::Fixed(Zone::parse("Asia/Tokyo").unwrap()),
        });
        assert_eq!(tokyo.format(t), "2016-10-04T08:58:09+09:00");
        let local_utc = TimeFormatter::new(TimeStyle::Text {
            format: Some("%Y %Z".into()),
            zone: ZoneMode::Local(Zone::parse("Etc/UTC").unwrap()),
        });
        assert_eq!(local_utc.format(t), "2016 UTC");
        assert_eq!(
            TimeFormatter::new(TimeStyle::Unixtime).format(t),
            "1475539089"
        );
        assert_eq!(
            TimeFormatter::new(TimeStyle::Float).format(t),
            "1475539089.000000005"
        );
    }
}
