//! Event routing exactly as Fluentd does it.
//!
//! The top level and every `<label @NAME>` hold an ordered list of `<filter>` and `<match>`
//! rules. For a tag, the route is: every filter whose pattern matches *before* the first
//! matching `<match>`, then that match's target. Later rules never see the tag. Routes are cached
//! per (label, tag). Sources emit into the top level or into the label named by their `@label`.
//!
//! `@ERROR`: when a target refuses a stream at emit time (buffer overflow, oversized records)
//! and a `<label @ERROR>` exists, the refused events are emitted there instead of failing the
//! input. A failure inside `@ERROR` is not routed to `@ERROR` again (no loop).
//!
//! Tags that no `<match>` takes are dropped with a rate-limited `no patterns matched tag="…"`
//! warning.

pub mod pattern;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, ConfigErrors, Element};
use crate::event::EventStream;
use crate::filter::{self, Filter};
use crate::output::{self, BoxFuture, EmitError, Output, Receipt, Target};
use pattern::MatchPatterns;

/// Identifies a label (the top level is one too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelId(usize);

impl LabelId {
    /// The top level (`@ROOT`).
    pub const ROOT: LabelId = LabelId(0);
}

#[derive(Debug)]
enum RuleKind {
    Filter(Arc<dyn Filter>),
    Match(Target),
}

#[derive(Debug)]
struct Rule {
    patterns: MatchPatterns,
    kind: RuleKind,
}

#[derive(Debug)]
struct Label {
    name: String,
    rules: Vec<Rule>,
}

/// The resolved path of one tag through one label.
#[derive(Debug)]
struct Route {
    filters: Vec<Arc<dyn Filter>>,
    target: Option<Target>,
}

/// Most routes cached before the cache is reset (bounds memory with many distinct tags).
const ROUTE_CACHE_LIMIT: usize = 4096;
/// How often the same unmatched tag is reported.
const UNMATCHED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Routes resolved so far, per label and tag.
type RouteCache = HashMap<(LabelId, Box<str>), Arc<Route>>;

/// The event router.
#[derive(Debug)]
pub struct Router {
    labels: Vec<Label>,
    by_name: HashMap<String, LabelId>,
    error_label: Option<LabelId>,
    cache: Mutex<RouteCache>,
    unmatched: Mutex<HashMap<Box<str>, Instant>>,
}

impl Router {
    /// Builds the router from the configuration root: top-level `<filter>`/`<match>` rules and
    /// `<label>` sections. Every problem found is reported, not just the first.
    pub fn build(root: &Element, ctx: &output::BuildContext) -> Result<Router, ConfigErrors> {
        let mut errors = Vec::new();
        let mut labels = vec![Label {
            name: "@ROOT".into(),
            rules: Vec::new(),
        }];
        let mut by_name = HashMap::new();
        collect_rules(root, &mut labels[0].rules, ctx, &mut errors);
        for section in root.sections("label") {
            let name = section.arg.trim();
            if name.is_empty() || !name.starts_with('@') {
                errors.push(ConfigError::at(
                    &section.pos,
                    "Missing symbol argument on <label> directive",
                ));
                continue;
            }
            if name == "@ROOT" {
                errors.push(ConfigError::at(
                    &section.arg_pos,
                    "<label @ROOT> is reserved for the top level",
                ));
                continue;
            }
            if by_name.contains_key(name) {
                errors.push(ConfigError::at(
                    &section.pos,
                    format!("Section <label {name}> appears twice"),
                ));
                continue;
            }
            let mut rules = Vec::new();
            collect_rules(section, &mut rules, ctx, &mut errors);
            by_name.insert(name.to_string(), LabelId(labels.len()));
            labels.push(Label {
                name: name.to_string(),
                rules,
            });
        }
        // Every relabel target must exist.
        for label in &labels {
            for rule in &label.rules {
                if let RuleKind::Match(t) = &rule.kind {
                    check_relabels(t, &by_name, &mut errors, root);
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let error_label = by_name.get("@ERROR").copied();
        Ok(Router {
            labels,
            by_name,
            error_label,
            cache: Mutex::new(HashMap::new()),
            unmatched: Mutex::new(HashMap::new()),
        })
    }

    /// The label a source's `@label` names.
    pub fn label(&self, name: &str) -> Option<LabelId> {
        if name == "@ROOT" {
            return Some(LabelId::ROOT);
        }
        self.by_name.get(name).copied()
    }

    /// Every output plugin instance reachable from any rule (for start, flush and shutdown).
    pub fn outputs(&self) -> Vec<Arc<dyn Output>> {
        fn walk(t: &Target, out: &mut Vec<Arc<dyn Output>>) {
            match t {
                Target::Output(o) => out.push(o.clone()),
                Target::Relabel(_) => {}
                Target::Copy(ts) => ts.iter().for_each(|t| walk(t, out)),
            }
        }
        let mut out = Vec::new();
        for l in &self.labels {
            for r in &l.rules {
                if let RuleKind::Match(t) = &r.kind {
                    walk(t, &mut out);
                }
            }
        }
        out
    }

    /// Emits a stream of events tagged `tag` into `label`. An error means the events were not
    /// (all) stored and no `@ERROR` label took them: the input should not acknowledge them.
    /// On success, the receipt's [`Receipt::durable`] tells when they may be acknowledged.
    pub async fn emit(
        &self,
        label: LabelId,
        tag: &str,
        es: EventStream,
    ) -> Result<Receipt, EmitError> {
        self.emit_in(label, tag, es, false).await
    }

    fn emit_in<'a>(
        &'a self,
        label: LabelId,
        tag: &'a str,
        es: EventStream,
        in_error: bool,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
        Box::pin(async move {
            if es.is_empty() {
                return Ok(Receipt::stored());
            }
            let route = self.route(label, tag);
            let Some(target) = &route.target else {
                self.report_unmatched(tag);
                return Ok(Receipt::stored());
            };
            let mut es = es;
            for f in &route.filters {
                es = f.filter_stream(tag, es);
                if es.is_empty() {
                    return Ok(Receipt::stored());
                }
            }
            match self.deliver(target, tag, es.clone(), in_error).await {
                Ok(mut receipt) => {
                    for r in std::mem::take(&mut receipt.rejected) {
                        match self.error_label {
                            Some(error_label) if !in_error => {
                                tracing::warn!(tag, error_class = r.class, error = %r.message, "send an error event stream to @ERROR:");
                                match self.emit_in(error_label, tag, r.events, true).await {
                                    Ok(more) => receipt.merge(more),
                                    Err(e) => {
                                        tracing::error!(tag, error = %e, "@ERROR label refused the rejected events")
                                    }
                                }
                            }
                            _ => tracing::error!(
                                tag,
                                error_class = r.class,
                                error = %r.message,
                                records = r.events.len(),
                                "emit transaction failed: these records cannot be stored and are dropped"
                            ),
                        }
                    }
                    Ok(receipt)
                }
                Err(e) => self.handle_error(tag, es, e, in_error).await,
            }
        })
    }

    async fn handle_error(
        &self,
        tag: &str,
        es: EventStream,
        e: EmitError,
        in_error: bool,
    ) -> Result<Receipt, EmitError> {
        match self.error_label {
            Some(error_label) if !in_error => {
                tracing::warn!(tag, error_class = e.class(), error = %e, "send an error event stream to @ERROR:");
                self.emit_in(error_label, tag, es, true).await
            }
            _ => {
                tracing::warn!(tag, error_class = e.class(), error = %e, "emit transaction failed:");
                Err(e)
            }
        }
    }

    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        tag: &'a str,
        es: EventStream,
        in_error: bool,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
        Box::pin(async move {
            match target {
                Target::Output(o) => o.emit(tag, es).await,
                Target::Relabel(name) => {
                    let id = self
                        .by_name
                        .get(name.as_str())
                        .copied()
                        .unwrap_or(LabelId::ROOT);
                    self.emit_in(id, tag, es, in_error).await
                }
                Target::Copy(stores) => {
                    let mut first_err = None;
                    let mut receipt = Receipt::stored();
                    for s in stores {
                        match self.deliver(s, tag, es.clone(), in_error).await {
                            Ok(r) => receipt.merge(r),
                            Err(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    first_err.map_or(Ok(receipt), Err)
                }
            }
        })
    }

    fn route(&self, label: LabelId, tag: &str) -> Arc<Route> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cache.get(&(label, Box::from(tag))) {
            return r.clone();
        }
        let mut filters = Vec::new();
        let mut target = None;
        for rule in &self.labels[label.0].rules {
            if !rule.patterns.matches(tag) {
                continue;
            }
            match &rule.kind {
                RuleKind::Filter(f) => filters.push(f.clone()),
                RuleKind::Match(t) => {
                    target = Some(t.clone());
                    break;
                }
            }
        }
        let route = Arc::new(Route { filters, target });
        if cache.len() >= ROUTE_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert((label, Box::from(tag)), route.clone());
        route
    }

    fn report_unmatched(&self, tag: &str) {
        let mut seen = self.unmatched.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = match seen.get(tag) {
            Some(last) => now.duration_since(*last) >= UNMATCHED_LOG_INTERVAL,
            None => true,
        };
        if due {
            if seen.len() >= ROUTE_CACHE_LIMIT {
                seen.clear();
            }
            seen.insert(Box::from(tag), now);
            tracing::warn!("no patterns matched tag=\"{tag}\"");
        }
    }

    /// The name of a label, for messages.
    pub fn label_name(&self, id: LabelId) -> &str {
        &self.labels[id.0].name
    }
}

fn check_relabels(
    t: &Target,
    by_name: &HashMap<String, LabelId>,
    errors: &mut Vec<ConfigError>,
    root: &Element,
) {
    match t {
        Target::Relabel(name) => {
            if name != "@ROOT" && !by_name.contains_key(name.as_str()) {
                errors.push(ConfigError::at(
                    &root.pos,
                    format!("relabel: label {name} is not defined"),
                ));
            }
        }
        Target::Copy(ts) => ts
            .iter()
            .for_each(|t| check_relabels(t, by_name, errors, root)),
        Target::Output(_) => {}
    }
}

fn collect_rules(
    parent: &Element,
    rules: &mut Vec<Rule>,
    ctx: &output::BuildContext,
    errors: &mut Vec<ConfigError>,
) {
    for section in &parent.elements {
        let is_filter = match section.name.as_str() {
            "filter" => true,
            "match" => false,
            _ => continue,
        };
        section.mark_used();
        let patterns = match MatchPatterns::parse(&section.arg) {
            Ok(p) => p,
            Err(msg) => {
                errors.push(ConfigError::at(&section.arg_pos, msg));
                continue;
            }
        };
        let kind = if is_filter {
            output::type_of(section)
                .and_then(|t| filter::build(section, &t))
                .map(RuleKind::Filter)
        } else {
            output::build(section, ctx).map(RuleKind::Match)
        };
        match kind {
            Ok(kind) => rules.push(Rule { patterns, kind }),
            Err(e) => errors.push(e),
        }
    }
}
