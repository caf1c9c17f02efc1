//! Property tests: the configuration parser and the pipeline builder never panic, and every
//! error they report points into the text they were given (`fuzz.conf`, line >= 1, within
//! the text).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sluice::config::parser::parse_str;
use sluice::config::ConfigError;

/// Valid configurations the mutations start from.
const SEEDS: &[&str] = &[
    r##"<source>
  @type sample
  tag app.web
  rate 10
  size 2
  auto_increment_key seq
  sample {"message":"hello", "n": [1, 2, {"x": null}]}
</source>
<filter app.**>
  @type record_transformer
  <record>
    host "#{Socket.gethostname}"
    tag_seen ${tag}
  </record>
</filter>
<match app.{web,api}>
  @type stdout
  <buffer tag,time>
    timekey 1h
    timekey_wait 10s
    timekey_zone +09:00
    chunk_limit_size 1.5m
    flush_at_shutdown true
  </buffer>
</match>
<match **>
  @type null
</match>
"##,
    r#"# comment line
<system>
  log_level info
</system>
<source>
  @type sample
  @label @IN
  tag 'quoted tag' # trailing comment
</source>
<label @IN>
  <filter **>
    @type grep
    <regexp>
      key message
      pattern /^h/
    </regexp>
    <exclude>
      key $.a.b
      pattern bad
    </exclude>
  </filter>
  <match **>
    @type relabel
    @label @OUT
  </match>
</label>
<label @OUT>
  <match **>
    @type copy
    <store>
      @type stdout
      <format>
        @type json
      </format>
    </store>
    <store>
      @type null
    </store>
  </match>
</label>
"#,
    r#"<match a.b /re.*gex/ c.**>
  @type stdout
  <buffer>
    @type file
    path /nonexistent/sluice/fuzz/buf
    flush_mode interval
    flush_interval 100ms
    retry_type periodic
    retry_wait 1s
    retry_max_times 3
    retry_secondary_threshold 0.5
    overflow_action drop_oldest_chunk
    total_limit_size 64m
  </buffer>
  <secondary>
    @type null
  </secondary>
</match>
<label @ERROR>
  <match **>
    @type stdout
  </match>
</label>
"#,
    "<source>\n  @type dummy\n  dummy [{\"a\":1},\n         {\"b\":\"x\\\"y\"}]\n  tag \"multi\nline\\t\\$\"\n</source>\n<match **>\n  @type stdout\n  <buffer [\"tag\", \"$.k8s.ns\"]>\n    chunk_limit_records 1_000\n    timekey_use_utc\n  </buffer>\n</match>\n",
];

/// Characters mutations insert: structure, quoting, escapes, odd Unicode.
const ALPHABET: &[char] = &[
    '<', '>', '/', '@', '#', '"', '\'', '\\', '{', '}', '[', ']', '$', '*', '.', ',', ':', ' ',
    ' ', '\t', '\n', '\n', '\r', 'a', 'z', 'k', 'm', 's', '0', '1', '9', '-', '+', '_', '|', '(',
    ')', '?', '\0', 'é', '日', '\u{feff}', '\u{7f}',
];

/// Snippets mutations may insert whole.
const TOKENS: &[&str] = &[
    "<match **>",
    "</match>",
    "<source>",
    "</source>",
    "<filter *>",
    "</filter>",
    "<buffer>",
    "</buffer>",
    "<buffer time>",
    "<secondary>",
    "</secondary>",
    "<label @X>",
    "</label>",
    "<store>",
    "</store>",
    "@type stdout",
    "@type null",
    "@type copy",
    "@type relabel",
    "@type sample",
    "@type grep",
    "@type record_transformer",
    "@type file",
    "@label @X",
    "@foo bar",
    "@include",
    "timekey 0",
    "timekey 1d",
    "chunk_limit_size abc",
    "retry_secondary_threshold 1.5",
    "flush_mode lazy",
    "flush_interval 1s",
    "\"#{ENV['HOME']}\"",
    "\"#{nope}\"",
    "{\"a\":",
    "[1,",
    "${tag}",
    "/unclosed",
    "{a,{b,c}",
    "\\",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, char),
    InsertToken(usize, usize),
    Delete(usize),
    Replace(usize, char),
    DuplicateLine(usize),
    RemoveLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let ch = proptest::sample::select(ALPHABET);
    prop_oneof![
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), ch).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::RemoveLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(seed: &str, muts: &[Mutation]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for m in muts {
        match *m {
            Mutation::Insert(i, c) => {
                let i = i % (chars.len() + 1);
                chars.insert(i, c);
            }
            Mutation::InsertToken(i, t) => {
                let i = i % (chars.len() + 1);
                let tok: Vec<char> = TOKENS[t].chars().collect();
                chars.splice(i..i, tok);
            }
            Mutation::Delete(i) if !chars.is_empty() => {
                let i = i % chars.len();
                chars.remove(i);
            }
            Mutation::Replace(i, c) if !chars.is_empty() => {
                let i = i % chars.len();
                chars[i] = c;
            }
            Mutation::DuplicateLine(i) | Mutation::RemoveLine(i) => {
                let text: String = chars.iter().collect();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let i = i % lines.len();
                if matches!(m, Mutation::DuplicateLine(_)) {
                    lines.insert(i, lines[i]);
                } else if lines.len() > 1 {
                    lines.remove(i);
                }
                chars = lines.join("\n").chars().collect();
            }
            Mutation::SwapLines(a, b) => {
                let text: String = chars.iter().collect();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let n = lines.len();
                lines.swap(a % n, b % n);
                chars = lines.join("\n").chars().collect();
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Checks that an error points into `text` of `fuzz.conf`.
fn check_pos(text: &str, e: &ConfigError) -> Result<(), TestCaseError> {
    let Some(p) = &e.pos else {
        return Err(TestCaseError::fail(format!(
            "error without position: {e:?}"
        )));
    };
    prop_assert_eq!(&*p.file, "fuzz.conf", "error {:?}", e);
    prop_assert!(p.line >= 1, "line < 1: {:?}", e);
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(
        (p.line as usize) <= lines.len(),
        "line {} past the end ({} lines): {:?}",
        p.line,
        lines.len(),
        e
    );
    let len = lines[p.line as usize - 1].chars().count();
    prop_assert!(
        (p.column as usize) <= len,
        "column {} past the end of line {} ({} chars): {:?}",
        p.column,
        p.line,
        len,
        e
    );
    prop_assert!(!e.message.is_empty(), "empty message: {:?}", e);
    Ok(())
}

/// How the cases of one property ended, to check the inputs reach every stage.
#[derive(Default)]
struct Outcomes {
    parse_error: AtomicUsize,
    build_error: AtomicUsize,
    built: AtomicUsize,
}

impl Outcomes {
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.parse_error.load(Ordering::Relaxed),
            self.build_error.load(Ordering::Relaxed),
            self.built.load(Ordering::Relaxed),
        )
    }
}

/// Parses and builds `text`; every error must be positioned in it.
fn parse_and_build(text: &str, dir: &Path, seen: &Outcomes) -> Result<(), TestCaseError> {
    match parse_str(text, "fuzz.conf", dir.to_path_buf()) {
        Err(e) => {
            seen.parse_error.fetch_add(1, Ordering::Relaxed);
            check_pos(text, &e)
        }
        Ok(root) => match sluice::pipeline::build(&root, Default::default()) {
            Ok(_) => {
                seen.built.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(errs) => {
                seen.build_error.fetch_add(1, Ordering::Relaxed);
                prop_assert!(!errs.0.is_empty(), "Err with no errors");
                for e in &errs.0 {
                    check_pos(text, e)?;
                }
                Ok(())
            }
        },
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn report<T: std::fmt::Debug>(r: Result<(), proptest::test_runner::TestError<T>>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[test]
fn seeds_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    for (i, s) in SEEDS.iter().enumerate() {
        let root = parse_str(s, "fuzz.conf", dir.path().to_path_buf())
            .unwrap_or_else(|e| panic!("seed {i}: {e}"));
        if let Err(e) = sluice::pipeline::build(&root, Default::default()) {
            panic!("seed {i}: {e}");
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Outcomes::default();
    let strategy = proptest::collection::vec(any::<u8>(), 0..600);
    report(runner(4000).run(&strategy, |bytes| {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        parse_and_build(&text, dir.path(), &seen)
    }));
    let (parse_error, _, _) = seen.counts();
    assert!(
        parse_error > 0,
        "random bytes never failed to parse: {:?}",
        seen.counts()
    );
}

#[test]
fn token_soup_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let piece = prop_oneof![
        proptest::sample::select(TOKENS).prop_map(str::to_string),
        proptest::sample::select(ALPHABET).prop_map(|c| c.to_string()),
        Just("\n".to_string()),
        Just("  ".to_string()),
        "[a-z_]{1,8}".prop_map(|s| s),
    ];
    let strategy = proptest::collection::vec(piece, 0..80).prop_map(|v| v.concat());
    let seen = Outcomes::default();
    report(runner(4000).run(&strategy, |text| parse_and_build(&text, dir.path(), &seen)));
    let (parse_error, _, built) = seen.counts();
    assert!(
        parse_error > 0 && built > 0,
        "token soup should both fail and pass parsing (parse errors, build errors, built): {:?}",
        seen.counts()
    );
}

#[test]
fn mutated_valid_configs_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let strategy = (0..SEEDS.len(), proptest::collection::vec(mutation(), 1..8));
    let seen = Outcomes::default();
    report(runner(4000).run(&strategy, |(seed, muts)| {
        let text = apply(SEEDS[seed], &muts);
        parse_and_build(&text, dir.path(), &seen)
    }));
    let (parse_error, build_error, built) = seen.counts();
    // Mutations of valid configs must exercise the builder, not just the parser.
    assert!(
        parse_error > 0 && build_error > 100 && built > 100,
        "mutations should reach every stage (parse errors, build errors, built): {:?}",
        seen.counts()
    );
    eprintln!(
        "mutated configs: parse errors, build errors, built = {:?}",
        seen.counts()
    );
}
