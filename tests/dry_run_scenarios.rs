//! Acceptance scenarios of the Fluentd buffer reference (`reference/fluentd-buffer.md`) §8.1 (configuration
//! acceptance/rejection) and §8.9 (value parsing), checked through `sluice --dry-run`.
//!
//! Where the reference's preface (and `docs/compatibility.md`) says sluice deliberately differs
//! from Fluentd, the tests assert sluice's behaviour; everywhere else they assert Fluentd's exact
//! message text.
//!
//! Not covered here: the file-output scenarios 4, 6, 7, 8, 9, 10, 33 and 34 are in
//! `tests/file_output.rs`; scenario 23 (shared buffer path) is checked in `src/output/mod.rs`.

mod common;

use common::*;
use tempfile::TempDir;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// `<match **>` with `@type stdout` and a `<buffer ARG>` holding `body` (lines already indented).
fn stdout_with_buffer(arg: &str, body: &str) -> String {
    let header = if arg.is_empty() {
        "<buffer>".to_string()
    } else {
        format!("<buffer {arg}>")
    };
    format!("<match **>\n  @type stdout\n  {header}\n{body}  </buffer>\n</match>\n")
}

// ------------------------------------------------------------------------------------------
// §8.1
// ------------------------------------------------------------------------------------------

#[test]
fn scenario_001_time_key_without_timekey() {
    let d = tmp();
    let (p, r) = dry(d.path(), "s1.conf", &stdout_with_buffer("time", ""));
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "<buffer ...> argument includes 'time', but timekey is not configured"
    );
    e.in_file(&p).at_line(3);

    // Control: with a timekey the same section is accepted.
    let (_, r) = dry(
        d.path(),
        "s1ok.conf",
        &stdout_with_buffer("time", "    timekey 1h\n"),
    );
    r.expect_ok();
}

#[test]
fn scenario_003_buffer_section_twice() {
    let d = tmp();
    let text =
        "<match **>\n  @type stdout\n  <buffer>\n  </buffer>\n  <buffer>\n  </buffer>\n</match>\n";
    let (p, r) = dry(d.path(), "s3.conf", text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "'<buffer>' section cannot be written twice or more"
    );
    e.in_file(&p);
    assert!(matches!(e.line, 3 | 5), "line of {e:?}");
}

#[test]
fn scenario_013_chunk_key_with_space() {
    let d = tmp();
    let (p, r) = dry(d.path(), "s13.conf", &stdout_with_buffer("ke y", ""));
    let e = r.expect_one_error();
    assert_eq!(e.error, "chunk_keys specification includes invalid char");
    e.in_file(&p).at_line(3);

    // Control: plain and dotted keys are fine.
    let (_, r) = dry(
        d.path(),
        "s13ok.conf",
        &stdout_with_buffer("tag,host-name,a_b,$.k8s.ns", ""),
    );
    r.expect_ok();
}

#[test]
fn scenario_014_bracket_notation_chunk_key() {
    let d = tmp();
    let (p, r) = dry(d.path(), "s14.conf", &stdout_with_buffer("$['key']", ""));
    let e = r.expect_one_error();
    // sluice does not double the `in chunk_keys:` prefix (preface).
    assert_eq!(e.error, "in chunk_keys: bracket notation is not allowed");
    e.in_file(&p).at_line(3);
}

#[test]
fn scenario_016_flush_interval_with_non_interval_mode() {
    let d = tmp();
    for mode in ["lazy", "immediate"] {
        let body = format!("    flush_mode {mode}\n    flush_interval 10s\n");
        let text = stdout_with_buffer("", &body);
        let (p, r) = dry(d.path(), &format!("s16_{mode}.conf"), &text);
        let e = r.expect_one_error();
        assert_eq!(
            e.error,
            format!(
                "'flush_interval' can't be specified when 'flush_mode' is not 'interval' explicitly: '{mode}'"
            )
        );
        e.in_file(&p);
        assert!(
            e.line == line_of(&text, "flush_interval") || e.line == line_of(&text, "flush_mode"),
            "line of {e:?}"
        );
    }
    // Control: explicit interval mode accepts flush_interval.
    let (_, r) = dry(
        d.path(),
        "s16ok.conf",
        &stdout_with_buffer("", "    flush_mode interval\n    flush_interval 10s\n"),
    );
    r.expect_ok();
}

#[test]
fn scenario_017_flush_interval_ignored_with_default_lazy_mode() {
    let d = tmp();
    let text = stdout_with_buffer("time", "    timekey 30m\n    flush_interval 10s\n");
    let (_, r) = dry(d.path(), "s17.conf", &text);
    r.expect_ok();
    assert!(
        r.has_warning(
            "'flush_interval' is ignored because default 'flush_mode' is not 'interval': 'lazy'"
        ),
        "missing warning: {r:#?}"
    );
}

#[test]
fn scenario_018_secondary_cannot_nest_buffer_or_secondary() {
    let d = tmp();
    for (inner, msg) in [
        ("buffer", "<secondary> section cannot have <buffer> section"),
        (
            "secondary",
            "<secondary> section cannot have <secondary> section",
        ),
    ] {
        let text = format!(
            "<match **>\n  @type stdout\n  <buffer>\n  </buffer>\n  <secondary>\n    @type null\n    <{inner}>\n    </{inner}>\n  </secondary>\n</match>\n"
        );
        let (p, r) = dry(d.path(), &format!("s18_{inner}.conf"), &text);
        let e = r.expect_one_error();
        assert_eq!(e.error, msg);
        e.in_file(&p);
        assert!((5..=7).contains(&e.line), "line of {e:?}");
    }
    // Control: a plain secondary is fine.
    let text = "<match **>\n  @type stdout\n  <buffer>\n  </buffer>\n  <secondary>\n    @type null\n  </secondary>\n</match>\n";
    let (_, r) = dry(d.path(), "s18ok.conf", text);
    r.expect_ok();
}

#[test]
fn scenario_019_relabel_with_buffer() {
    let d = tmp();
    let label = "<label @X>\n  <match **>\n    @type null\n  </match>\n</label>\n";
    let text = format!(
        "<match **>\n  @type relabel\n  @label @X\n  <buffer>\n  </buffer>\n</match>\n{label}"
    );
    let (p, r) = dry(d.path(), "s19a.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "<buffer> section is configured, but plugin 'Fluent::Plugin::RelabelOutput' doesn't support buffering"
    );
    e.in_file(&p);
}

#[test]
fn scenario_019_relabel_with_secondary() {
    let d = tmp();
    let label = "<label @X>\n  <match **>\n    @type null\n  </match>\n</label>\n";
    let text = format!(
        "<match **>\n  @type relabel\n  @label @X\n  <secondary>\n    @type null\n  </secondary>\n</match>\n{label}"
    );
    let (p, r) = dry(d.path(), "s19b.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "Invalid <secondary> section for non-buffered plugin"
    );
    e.in_file(&p);
}

#[test]
fn scenario_020_copy_as_secondary() {
    let d = tmp();
    let text = "<match **>\n  @type stdout\n  <buffer>\n  </buffer>\n  <secondary>\n    @type copy\n    <store>\n      @type null\n    </store>\n  </secondary>\n</match>\n";
    let (p, r) = dry(d.path(), "s20.conf", text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "Failed to setup secondary plugin in 'stdout'. 'copy' plugin in not allowed due to non buffered output"
    );
    e.in_file(&p);
}

/// One `<match zN>` per zone, each with a time-keyed buffer using that `timekey_zone`.
fn zones_config(zones: &[&str]) -> String {
    zones
        .iter()
        .enumerate()
        .map(|(i, z)| {
            format!(
                "<match z{i}>\n  @type stdout\n  <buffer time>\n    timekey 1h\n    timekey_zone {z}\n  </buffer>\n</match>\n"
            )
        })
        .collect()
}

#[test]
fn scenario_022_timekey_zone() {
    let d = tmp();
    // Accepted: Fluentd's accepted forms plus UTC and Z (sluice, preface).
    let ok = [
        "UTC",
        "Z",
        "Etc/UTC",
        "+09:00",
        "America/Argentina/Buenos_Aires",
    ];
    let (_, r) = dry(d.path(), "s22ok.conf", &zones_config(&ok));
    r.expect_ok();

    let bad = ["JST", "+9", "Mars/Olympus"];
    let text = zones_config(&bad);
    let (p, r) = dry(d.path(), "s22bad.conf", &text);
    assert_eq!(r.code, Some(1), "{r:#?}");
    let errs = r.errors();
    assert_eq!(errs.len(), bad.len(), "one error per bad zone: {r:#?}");
    for (e, z) in errs.iter().zip(bad) {
        assert_eq!(e.error, format!("Unsupported timezone '{z}'"));
        e.in_file(&p)
            .at_line(line_of(&text, &format!("timekey_zone {z}")));
    }
}

#[test]
fn scenario_023_two_file_buffers_share_a_path() {
    let d = tmp();
    let shared = d.path().join("sharedbuf");
    let out = |name: &str| {
        format!(
            "<match {name}.**>\n  @type file\n  path {}/{name}\n  <buffer>\n    @type file\n    path {}\n  </buffer>\n</match>\n",
            d.path().display(),
            shared.display()
        )
    };
    let (p, r) = dry(d.path(), "s23.conf", &format!("{}{}", out("a"), out("b")));
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        format!(
            "Other 'file' plugin already use same buffer path: type = file, buffer path = {}",
            shared.display()
        )
    );
    // At the second plugin's buffer path.
    e.in_file(&p).at_line(14);
    assert!(!shared.exists(), "a dry run creates no buffer directory");
}

#[test]
fn scenario_024_file_buffer_without_path() {
    let d = tmp();
    let text = stdout_with_buffer("", "    @type file\n");
    let (p, r) = dry(d.path(), "s24.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "buffer path is not configured. specify 'path' in <buffer>"
    );
    e.in_file(&p);
    assert!((1..=5).contains(&e.line), "line of {e:?}");

    // Controls: an explicit path, or @id with <system> root_dir.
    let body = format!("    @type file\n    path {}/buf\n", d.path().display());
    let (_, r) = dry(d.path(), "s24path.conf", &stdout_with_buffer("", &body));
    r.expect_ok();
    let text = format!(
        "<system>\n  root_dir {}\n</system>\n<match **>\n  @type stdout\n  @id out1\n  <buffer>\n    @type file\n  </buffer>\n</match>\n",
        d.path().join("root").display()
    );
    let (_, r) = dry(d.path(), "s24id.conf", &text);
    r.expect_ok();
}

#[test]
fn scenario_025_bool_nil() {
    let d = tmp();
    let text = stdout_with_buffer("", "    timekey_use_utc maybe\n");
    let (p, r) = dry(d.path(), "s25.conf", &text);
    let e = r.expect_one_error();
    assert!(
        e.error
            .contains("'timekey_use_utc' parameter is required but nil is specified"),
        "{e:?}"
    );
    // compatibility.md: sluice adds the value.
    assert!(e.error.contains("maybe"), "{e:?}");
    e.in_file(&p).at_line(4);
}

#[test]
fn scenario_026_unused_buffer_parameters_warn() {
    let d = tmp();
    let text = stdout_with_buffer("", "    foo_bar 1\n");
    let (p, r) = dry(d.path(), "s26.conf", &text);
    r.expect_ok();
    assert!(
        r.warnings()
            .iter()
            .any(|l| l.contains("parameter 'foo_bar' in <buffer>") && l.contains("is not used.")),
        "missing warning: {r:#?}"
    );

    let text2 = stdout_with_buffer("", "    @type memory\n    path /x\n");
    let (_, r) = dry(d.path(), "s26mem.conf", &text2);
    r.expect_ok();
    assert!(
        r.has_warning("parameter 'path' in <buffer> is not used."),
        "missing warning: {r:#?}"
    );

    // --strict: the same finding is an error, at the parameter.
    let r = dry_run_strict(&p);
    let e = r.expect_one_error();
    assert_eq!(e.error, "parameter 'foo_bar' in <buffer> is not used.");
    e.in_file(&p).at_line(4);
}

#[test]
fn scenario_027_non_numeric_size() {
    let d = tmp();
    let text = stdout_with_buffer("", "    chunk_limit_size abc\n");
    let (p, r) = dry(d.path(), "s27.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "chunk_limit_size: invalid value for Integer(): \"abc\""
    );
    e.in_file(&p).at_line(4);
}

#[test]
fn scenario_028_missing_and_unknown_output_type() {
    let d = tmp();
    let (p, r) = dry(d.path(), "s28a.conf", "<match **>\n</match>\n");
    let e = r.expect_one_error();
    assert_eq!(e.error, "Missing '@type' parameter on <match> directive");
    e.in_file(&p).at_line(1);

    let text = "<match **>\n  @type nosuchplugin\n</match>\n";
    let (p, r) = dry(d.path(), "s28b.conf", text);
    let e = r.expect_one_error();
    assert!(
        e.error.starts_with("Unknown output plugin 'nosuchplugin'."),
        "{e:?}"
    );
    for t in ["stdout", "null", "copy", "relabel"] {
        assert!(e.error.contains(t), "supported type {t} not listed: {e:?}");
    }
    e.in_file(&p).at_line(2);
}

#[test]
fn scenario_029_reserved_at_prefix() {
    let d = tmp();
    let text = "<match **>\n  @type stdout\n  @foo bar\n</match>\n";
    let (p, r) = dry(d.path(), "s29.conf", text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "'@' is the system reserved prefix. Don't use '@' prefix parameter in the configuration: @foo"
    );
    e.in_file(&p);
    assert_eq!((e.line, e.column), (3, 7), "{e:?}");
}

#[test]
fn scenario_029_reserved_at_prefix_top_level() {
    let d = tmp();
    // Top level: an error too.
    let (p, r) = dry(
        d.path(),
        "s29top.conf",
        "@foo bar\n<match **>\n  @type stdout\n</match>\n",
    );
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "'@' is the system reserved prefix. Don't use '@' prefix parameter in the configuration: @foo"
    );
    e.in_file(&p).at_line(1);
}

#[test]
fn scenario_029_reserved_at_prefix_nested_only_warns() {
    let d = tmp();
    // Deeper sections only warn.
    let text = stdout_with_buffer("", "    @foo bar\n");
    let (_, r) = dry(d.path(), "s29deep.conf", &text);
    r.expect_ok();
    assert!(
        r.has_warning("'@' is the system reserved prefix") && r.has_warning("@foo"),
        "expected a warning about @foo in <buffer>: {r:#?}"
    );
}

#[test]
fn scenario_030_unmatched_end_tag() {
    let d = tmp();
    let text = "<match **>\n  @type stdout\n</source>\n";
    let (p, r) = dry(d.path(), "s30.conf", text);
    let e = r.expect_one_error();
    assert!(e.error.starts_with("unmatched end tag"), "{e:?}");
    e.in_file(&p);
    assert!((3..=4).contains(&e.line), "line of {e:?}");
}

#[test]
fn scenario_031_invalid_regex_pattern() {
    let d = tmp();
    let text = "<match /abc>\n  @type stdout\n</match>\n";
    let (p, r) = dry(d.path(), "s31.conf", text);
    let e = r.expect_one_error();
    assert_eq!(e.error, "invalid match - regex");
    e.in_file(&p).at_line(1);

    // Control: a closed regex is fine.
    let (_, r) = dry(
        d.path(),
        "s31ok.conf",
        "<match /abc/>\n  @type stdout\n</match>\n",
    );
    r.expect_ok();
}

#[test]
fn scenario_032_label_without_name_and_twice() {
    let d = tmp();
    let text = "<label>\n  <match **>\n    @type null\n  </match>\n</label>\n";
    let (p, r) = dry(d.path(), "s32a.conf", text);
    let e = r.expect_one_error();
    assert_eq!(e.error, "Missing symbol argument on <label> directive");
    e.in_file(&p).at_line(1);

    let one = "<label @X>\n  <match **>\n    @type null\n  </match>\n</label>\n";
    let text = format!("{one}{one}");
    let (p, r) = dry(d.path(), "s32b.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(e.error, "Section <label @X> appears twice");
    e.in_file(&p);
    assert!(matches!(e.line, 1 | 6), "line of {e:?}");
}

#[test]
fn scenario_036_retry_secondary_threshold_out_of_range() {
    let d = tmp();
    let conf = |t: &str| {
        format!(
            "<match **>\n  @type stdout\n  <buffer>\n    retry_secondary_threshold {t}\n  </buffer>\n  <secondary>\n    @type null\n  </secondary>\n</match>\n"
        )
    };
    // sluice reports at start-up what Fluentd only raises at the first flush.
    let (p, r) = dry(d.path(), "s36.conf", &conf("1.5"));
    let e = r.expect_one_error();
    assert!(
        e.error
            .contains("secondary_transition_threshold MUST be between 0 and 1"),
        "{e:?}"
    );
    e.in_file(&p).at_line(4);

    let (_, r) = dry(d.path(), "s36ok.conf", &conf("0.5"));
    r.expect_ok();
}

// ------------------------------------------------------------------------------------------
// Generic configuration rules (§6.1) not numbered as scenarios.
// ------------------------------------------------------------------------------------------

#[test]
fn include_glob_sorted_relative_and_spliced() {
    let d = tmp();
    let dir = d.path();
    let main = write(
        dir,
        "main.conf",
        "<source>\n  @type sample\n  tag inc\n</source>\n@include conf.d/*.conf\n<match never>\n  @type stdout\n  <buffer>\n    @include buffer_params.conf\n  </buffer>\n</match>\n",
    );
    // Written in reverse order, so a sorted result is not an accident of creation order.
    write(
        dir,
        "conf.d/b.conf",
        "<match b.**>\n  @type null\n</match>\n",
    );
    write(
        dir,
        "conf.d/a.conf",
        "<match a.**>\n  @type stdout\n  <buffer>\n    @include sub/extra.conf\n  </buffer>\n</match>\n",
    );
    write(dir, "conf.d/notes.txt", "this is not a config <<<\n");
    // Relative to the including file (conf.d/), not to main.conf's directory nor the cwd.
    write(dir, "conf.d/sub/extra.conf", "chunk_limit_size 3k\n");
    write(dir, "sub/extra.conf", "chunk_limit_size 9k\n");
    write(
        dir,
        "buffer_params.conf",
        "chunk_limit_size 2k\nflush_interval 7s\n",
    );
    let elsewhere = tmp();
    write(
        elsewhere.path(),
        "conf.d/z.conf",
        "<match z>\n  @type nosuchplugin\n</match>\n",
    );

    let r = run_with(
        &["--dry-run", "--show-config", "-c", main.to_str().unwrap()],
        &[],
        &[],
        Some(elsewhere.path()),
    );
    r.expect_ok();
    let out = &r.stdout;
    let pos = |s: &str| {
        out.find(s)
            .unwrap_or_else(|| panic!("{s:?} missing from --show-config: {r:#?}"))
    };
    assert!(pos("<source>") < pos("<match a.**>"), "{out}");
    assert!(pos("<match a.**>") < pos("<match b.**>"), "{out}");
    assert!(pos("<match b.**>") < pos("<match never>"), "{out}");
    assert!(!out.contains("<match z>"), "{out}");

    assert_eq!(
        r.typed_at("chunk_limit_size", "conf.d/sub/extra.conf", 1),
        "3072"
    );
    assert_eq!(
        r.typed_at("chunk_limit_size", "/buffer_params.conf", 1),
        "2048"
    );
    assert_eq!(r.typed_at("flush_interval", "/buffer_params.conf", 2), "7s");
    // The spliced parameters belong to the <buffer> of <match never>.
    let never = &out[pos("<match never>")..];
    let buffer_end = never.find("</buffer>").unwrap();
    assert!(never[..buffer_end].contains("flush_interval 7s"), "{out}");
}

#[test]
fn include_missing_file_is_an_error_naming_it() {
    let d = tmp();
    let text = "<match **>\n  @type stdout\n</match>\n@include nothere.conf\n";
    let (p, r) = dry(d.path(), "main.conf", text);
    let e = r.expect_one_error();
    assert!(e.error.contains("nothere.conf"), "{e:?}");
    e.in_file(&p).at_line(4);
}

#[test]
fn include_glob_matching_nothing_warns() {
    let d = tmp();
    let text = "@include nothing/*.conf\n<match **>\n  @type stdout\n</match>\n";
    let (_, r) = dry(d.path(), "main.conf", text);
    r.expect_ok();
    assert!(
        r.has_warning("nothing/*.conf"),
        "expected a warning about the empty glob (compatibility.md): {r:#?}"
    );
}

#[test]
fn include_error_names_the_included_file() {
    let d = tmp();
    let main = write(d.path(), "main.conf", "# main\n@include inc/bad.conf\n");
    let bad = write(
        d.path(),
        "inc/bad.conf",
        "<match **>\n  @type stdout\n  @foo bar\n</match>\n",
    );
    let r = dry_run(&main);
    let e = r.expect_one_error();
    assert!(e.error.contains("@foo"), "{e:?}");
    e.in_file(&bad);
    assert_eq!((e.line, e.column), (3, 7), "{e:?}");
}

#[test]
fn unknown_parameter_warns_and_strict_makes_it_an_error() {
    let d = tmp();
    let text = "<match **>\n  @type stdout\n  foo_bar 1\n</match>\n";
    let (p, r) = dry(d.path(), "u.conf", text);
    r.expect_ok();
    assert!(
        r.has_warning("parameter 'foo_bar' in <match **> is not used."),
        "{r:#?}"
    );
    let r = dry_run_strict(&p);
    let e = r.expect_one_error();
    assert_eq!(e.error, "parameter 'foo_bar' in <match **> is not used.");
    e.in_file(&p).at_line(3);
    assert_eq!(e.column, 2, "{e:?}");

    // Control: a clean config passes --strict.
    let (p, _) = dry(
        d.path(),
        "clean.conf",
        "<match **>\n  @type stdout\n</match>\n",
    );
    dry_run_strict(&p).expect_ok();
}

#[test]
fn several_errors_are_reported_in_one_run() {
    let d = tmp();
    let text = "<match a>\n</match>\n<match b>\n  @type nosuch\n</match>\n<match c>\n  @type stdout\n  <buffer>\n    chunk_limit_size abc\n  </buffer>\n</match>\n";
    let (p, r) = dry(d.path(), "multi.conf", text);
    assert_eq!(r.code, Some(1), "{r:#?}");
    let errs = r.errors();
    assert_eq!(errs.len(), 3, "{r:#?}");
    assert_eq!(
        errs[0].error,
        "Missing '@type' parameter on <match> directive"
    );
    errs[0].in_file(&p).at_line(1);
    assert!(
        errs[1].error.starts_with("Unknown output plugin 'nosuch'."),
        "{errs:?}"
    );
    errs[1].in_file(&p).at_line(4);
    assert_eq!(
        errs[2].error,
        "chunk_limit_size: invalid value for Integer(): \"abc\""
    );
    errs[2].in_file(&p).at_line(9);
    // Nothing but error lines (and log lines) on stderr: one line per error.
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| l.contains("config error"))
            .count(),
        3,
        "{r:#?}"
    );
}

#[test]
fn two_broken_match_sections_give_two_lines() {
    let d = tmp();
    let text = "<match a>\n  @type stdout\n  <buffer time>\n  </buffer>\n</match>\n<match b>\n  @type stdout\n  <buffer>\n    flush_mode lazy\n    flush_interval 1s\n  </buffer>\n</match>\n";
    let (p, r) = dry(d.path(), "two.conf", text);
    assert_eq!(r.code, Some(1), "{r:#?}");
    let errs = r.errors();
    assert_eq!(errs.len(), 2, "{r:#?}");
    assert_eq!(
        errs[0].error,
        "<buffer ...> argument includes 'time', but timekey is not configured"
    );
    errs[0].in_file(&p).at_line(3);
    assert!(
        errs[1]
            .error
            .starts_with("'flush_interval' can't be specified"),
        "{errs:?}"
    );
    errs[1].in_file(&p);
    assert!((9..=10).contains(&errs[1].line), "{errs:?}");
}

#[test]
fn unknown_filter_type() {
    let d = tmp();
    let text =
        "<filter **>\n  @type nosuchfilter\n</filter>\n<match **>\n  @type stdout\n</match>\n";
    let (p, r) = dry(d.path(), "f.conf", text);
    let e = r.expect_one_error();
    assert!(
        e.error.starts_with("Unknown filter plugin 'nosuchfilter'."),
        "{e:?}"
    );
    assert!(
        e.error.contains("grep"),
        "supported filters not listed: {e:?}"
    );
    e.in_file(&p).at_line(2);

    let (p, r) = dry(d.path(), "f2.conf", "<filter **>\n</filter>\n");
    let e = r.expect_one_error();
    assert_eq!(e.error, "Missing '@type' parameter on <filter> directive");
    e.in_file(&p).at_line(1);
}

#[test]
fn unknown_input_type() {
    let d = tmp();
    let text = "<source>\n  @type nosuchinput\n</source>\n<match **>\n  @type stdout\n</match>\n";
    let (p, r) = dry(d.path(), "i.conf", text);
    let e = r.expect_one_error();
    assert!(
        e.error.starts_with("Unknown input plugin 'nosuchinput'."),
        "{e:?}"
    );
    assert!(
        e.error.contains("sample"),
        "supported inputs not listed: {e:?}"
    );
    e.in_file(&p).at_line(2);

    let (p, r) = dry(d.path(), "i2.conf", "<source>\n  tag x\n</source>\n");
    let e = r.expect_one_error();
    assert_eq!(e.error, "Missing '@type' parameter on <source> directive");
    e.in_file(&p).at_line(1);
}

// ------------------------------------------------------------------------------------------
// §8.9 value parsing, through --show-config
// ------------------------------------------------------------------------------------------

/// Builds a config line by line, remembering the line number of chosen lines.
#[derive(Default)]
struct Conf {
    lines: Vec<String>,
}

impl Conf {
    fn push(&mut self, l: impl Into<String>) -> u32 {
        self.lines.push(l.into());
        self.lines.len() as u32
    }
    fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

#[test]
fn scenario_110_size_values() {
    let d = tmp();
    let cases: &[(&str, u64)] = &[
        ("2k", 2048),
        ("2K", 2048),
        ("3m", 3145728),
        ("4g", 4294967296),
        ("5t", 5497558138880),
        ("6", 6),
        ("1kb", 1024),
        ("10KB", 10240),
        ("2mb", 2097152),
        ("1.5m", 1572864), // sluice: 1.5 MiB (Fluentd: 5242880)
        ("1.5", 1),
        ("1_000", 1000),
    ];
    let mut c = Conf::default();
    let mut at = Vec::new();
    for (i, (v, _)) in cases.iter().enumerate() {
        c.push(format!("<match s{i}>"));
        c.push("  @type stdout");
        c.push("  <buffer>");
        at.push(c.push(format!("    chunk_limit_size {v}")));
        c.push("  </buffer>");
        c.push("</match>");
    }
    let p = write(d.path(), "sizes.conf", &c.text());
    let r = show_config(&p);
    r.expect_ok();
    for ((v, want), line) in cases.iter().zip(at) {
        assert_eq!(
            r.typed_at("chunk_limit_size", "sizes.conf", line),
            want.to_string(),
            "size {v:?}"
        );
    }

    // sluice: not silently 0, but an error naming parameter and value.
    let bad = ["abc", "0x10"];
    let mut c = Conf::default();
    let mut at = Vec::new();
    for (i, v) in bad.iter().enumerate() {
        c.push(format!("<match s{i}>"));
        c.push("  @type stdout");
        c.push("  <buffer>");
        at.push(c.push(format!("    chunk_limit_size {v}")));
        c.push("  </buffer>");
        c.push("</match>");
    }
    let (p, r) = dry(d.path(), "sizes_bad.conf", &c.text());
    assert_eq!(r.code, Some(1), "{r:#?}");
    let errs = r.errors();
    assert_eq!(errs.len(), bad.len(), "{r:#?}");
    for ((e, v), line) in errs.iter().zip(bad).zip(at) {
        assert_eq!(
            e.error,
            format!("chunk_limit_size: invalid value for Integer(): \"{v}\"")
        );
        e.in_file(&p).at_line(line);
    }
}

/// Parses a `--show-config` time (`0.1s`) into seconds.
fn secs(typed: &str) -> f64 {
    typed
        .strip_suffix('s')
        .unwrap_or_else(|| panic!("time shown without 's': {typed:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("time shown as {typed:?}: {e}"))
}

#[test]
fn scenario_111_time_values() {
    let d = tmp();
    let cases: &[(&str, f64)] = &[
        ("10s", 10.0),
        ("10sec", 10.0),
        ("2m", 120.0),
        ("3h", 10800.0),
        ("4d", 345600.0),
        ("60", 60.0),
        ("0.5", 0.5),
        ("1.5h", 5400.0), // sluice: 1.5 h (Fluentd: 18000)
        ("100ms", 0.1),   // sluice: 0.1 s (Fluentd: 6000)
        ("10S", 10.0),
    ];
    let mut c = Conf::default();
    let mut at = Vec::new();
    for (i, (v, _)) in cases.iter().enumerate() {
        c.push(format!("<match t{i}>"));
        c.push("  @type stdout");
        c.push("  <buffer>");
        c.push("    flush_mode interval");
        let a = c.push(format!("    flush_interval {v}"));
        let b = c.push(format!("    retry_wait {v}"));
        at.push((a, b));
        c.push("  </buffer>");
        c.push("</match>");
    }
    let p = write(d.path(), "times.conf", &c.text());
    let r = show_config(&p);
    r.expect_ok();
    for ((v, want), (a, b)) in cases.iter().zip(at) {
        for (key, line) in [("flush_interval", a), ("retry_wait", b)] {
            let got = secs(&r.typed_at(key, "times.conf", line));
            assert!(
                (got - want).abs() < 1e-9,
                "{key} {v:?}: got {got}, want {want}"
            );
        }
    }

    // sluice: errors instead of 0.0 / 1.0.
    let bad = [
        ("flush_interval", "1w"),
        ("flush_interval", "1M"),
        ("flush_interval", "abc"),
        ("retry_wait", "abc"),
    ];
    let mut c = Conf::default();
    let mut at = Vec::new();
    for (i, (k, v)) in bad.iter().enumerate() {
        c.push(format!("<match t{i}>"));
        c.push("  @type stdout");
        c.push("  <buffer>");
        c.push("    flush_mode interval");
        at.push(c.push(format!("    {k} {v}")));
        c.push("  </buffer>");
        c.push("</match>");
    }
    let (p, r) = dry(d.path(), "times_bad.conf", &c.text());
    assert_eq!(r.code, Some(1), "{r:#?}");
    let errs = r.errors();
    assert_eq!(errs.len(), bad.len(), "{r:#?}");
    for ((e, (k, v)), line) in errs.iter().zip(bad).zip(at) {
        assert_eq!(e.error, format!("{k}: invalid value for Float(): \"{v}\""));
        e.in_file(&p).at_line(line);
    }
}

#[test]
fn scenario_112_bool_values() {
    let d = tmp();
    let cases: &[(&str, &str)] = &[
        ("true", "true"),
        ("yes", "true"),
        ("false", "false"),
        ("no", "false"),
        ("", "true"),
    ];
    let mut c = Conf::default();
    let mut at = Vec::new();
    for (i, (v, _)) in cases.iter().enumerate() {
        c.push(format!("<match b{i}>"));
        c.push("  @type stdout");
        c.push("  <buffer>");
        at.push(c.push(if v.is_empty() {
            "    timekey_use_utc".to_string()
        } else {
            format!("    timekey_use_utc {v}")
        }));
        c.push("  </buffer>");
        c.push("</match>");
    }
    let p = write(d.path(), "bools.conf", &c.text());
    let r = show_config(&p);
    r.expect_ok();
    for ((v, want), line) in cases.iter().zip(at) {
        assert_eq!(
            r.typed_at("timekey_use_utc", "bools.conf", line),
            *want,
            "bool {v:?}"
        );
    }

    let text = stdout_with_buffer("", "    timekey_use_utc hoge\n");
    let (p, r) = dry(d.path(), "bool_bad.conf", &text);
    let e = r.expect_one_error();
    assert!(
        e.error
            .contains("'timekey_use_utc' parameter is required but nil is specified"),
        "{e:?}"
    );
    assert!(e.error.contains("invalid bool value: hoge"), "{e:?}");
    e.in_file(&p).at_line(4);
}

/// A `<source>` of type sample whose `tag` line is `tag_line` (may span lines).
fn sample_source(c: &mut Conf, tag_line: &str) -> u32 {
    c.push("<source>");
    c.push("  @type sample");
    let mut first = None;
    for (i, l) in tag_line.split('\n').enumerate() {
        let n = c.push(if i == 0 {
            format!("  {l}")
        } else {
            l.to_string()
        });
        first.get_or_insert(n);
    }
    c.push("</source>");
    first.unwrap()
}

#[test]
fn scenario_113_literal_parsing() {
    let d = tmp();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok();
    let mut cases: Vec<(&str, String)> = vec![
        ("tag foo #bar", "\"foo\"".into()),
        ("tag foo#bar", "\"foo#bar\"".into()),
        (r#"tag "\.t""#, "\".t\"".into()),
        (r"tag '\z'", r#""\\z""#.into()),
        (r"tag 'it\'s'", "\"it's\"".into()),
        (r#"tag "\0""#, r#""\0""#.into()),
        ("tag \"t\nt\"", r#""t\nt""#.into()),
        (r#"tag "t\nt""#, r#""t\nt""#.into()),
        (r#"tag "a\"b\\c\tq""#, r#""a\"b\\c\tq""#.into()),
        ("tag '#{test}'", "\"#{test}\"".into()),
        ("tag \"#{ENV['SLUICE_T113_X']}\"", "\"from-env\"".into()),
        (
            "tag \"pre.#{ENV[\"SLUICE_T113_X\"]}.post\"",
            "\"pre.from-env.post\"".into(),
        ),
        ("tag \"#{ENV['SLUICE_T113_UNSET']}\"", "\"\"".into()),
        ("tag   spaced value   ", "\"spaced value\"".into()),
        (r"tag a\b", r#""a\\b""#.into()),
    ];
    if let Some(h) = &hostname {
        cases.push(("tag \"#{Socket.gethostname}\"", format!("{h:?}")));
    }
    let mut c = Conf::default();
    let mut at = Vec::new();
    for (l, _) in &cases {
        at.push(sample_source(&mut c, l));
    }
    // A value starting with `{` is JSON, possibly over several lines (re-serialized).
    c.push("<source>");
    c.push("  @type sample");
    let json_line = c.push("  sample {\"a\": 1,");
    c.push("          \"b\": [1, 2]}");
    c.push("</source>");

    let p = write(d.path(), "literals.conf", &c.text());
    let r = run_with(
        &["--dry-run", "--show-config", "-c", p.to_str().unwrap()],
        &[("SLUICE_T113_X", "from-env")],
        &["SLUICE_T113_UNSET"],
        None,
    );
    r.expect_ok();
    for ((l, want), line) in cases.iter().zip(at) {
        assert_eq!(
            &r.typed_at("tag", "literals.conf", line),
            want,
            "literal {l:?}"
        );
    }
    assert_eq!(
        r.typed_at("sample", "literals.conf", json_line),
        r#""{\"a\":1,\"b\":[1,2]}""#
    );
}

#[test]
fn scenario_113_literal_parse_errors() {
    let d = tmp();
    let cases: &[(&str, &str, &[&str])] = &[
        ("esc", r#"tag "\z""#, &["escape", "z"]),
        ("ruby", "tag \"#{1 + 1}\"", &["#{1 + 1}"]),
        ("ruby2", "tag \"#{`id`}\"", &["#{`id`}"]),
        (
            "hash",
            "tag {t",
            &["got incomplete JSON hash configuration"],
        ),
        (
            "array",
            "tag [t",
            &["got incomplete JSON array configuration"],
        ),
        ("dq_eof", "tag \"never closed", &["double quoted string"]),
    ];
    for (name, l, needles) in cases {
        let mut c = Conf::default();
        let line = sample_source(&mut c, l);
        let (p, r) = dry(d.path(), &format!("lit_{name}.conf"), &c.text());
        let e = r.expect_one_error();
        for n in *needles {
            assert!(e.error.contains(n), "{l:?}: {e:?} should contain {n:?}");
        }
        e.in_file(&p);
        assert!(e.line >= line, "{l:?}: {e:?} before line {line}");
        if !["hash", "array", "dq_eof"].contains(name) {
            assert_eq!(e.line, line, "{l:?}: {e:?}");
        }
    }
    // JSON that does not start a value is only text.
    let mut c = Conf::default();
    let line = sample_source(&mut c, "tag t{x");
    let p = write(d.path(), "lit_plain.conf", &c.text());
    let r = show_config(&p);
    r.expect_ok();
    assert_eq!(r.typed_at("tag", "lit_plain.conf", line), "\"t{x\"");
}
