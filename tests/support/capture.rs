//! Span and event capture for the tracing tests: a `tracing_subscriber`
//! layer recording spans (with every field, parent and follows-from links)
//! and events, and [`install`], which sets a subscriber as the thread's
//! default with a second dispatcher registered (see [`Installed`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A recorded field value, typed as `tracing` delivered it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

pub type Fields = BTreeMap<String, Val>;

pub fn str_of<'a>(fields: &'a Fields, key: &str) -> Option<&'a str> {
    match fields.get(key) {
        Some(Val::Str(s)) => Some(s),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct SpanRec {
    pub id: u64,
    pub name: &'static str,
    pub target: String,
    pub level: Level,
    /// Index (in the captured spans) of the parent span.
    pub parent: Option<usize>,
    /// Indexes of the spans this one follows from.
    pub follows: Vec<usize>,
    pub fields: Fields,
}

impl SpanRec {
    pub fn get(&self, key: &str) -> Option<&Val> {
        self.fields.get(key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        str_of(&self.fields, key)
    }

    pub fn f64(&self, key: &str) -> Option<f64> {
        match self.get(key) {
            Some(Val::F64(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Val::Bool(v)) => Some(*v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventRec {
    pub level: Level,
    pub target: String,
    pub message: String,
    pub fields: Fields,
}

impl EventRec {
    pub fn str(&self, key: &str) -> Option<&str> {
        str_of(&self.fields, key)
    }
}

pub struct Visitor<'a>(pub &'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Val::Str(value.to_owned()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Val::U64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Val::I64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Val::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Val::Bool(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Val::Str(format!("{value:?}")));
    }
}

#[derive(Default)]
pub struct Captured {
    pub spans: Vec<SpanRec>,
    pub events: Vec<EventRec>,
}

impl Captured {
    /// The newest span with this id (the registry reuses ids of closed spans).
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.spans.iter().rposition(|s| s.id == id)
    }
}

#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Captured>>);

impl Capture {
    pub fn spans(&self) -> Vec<SpanRec> {
        self.0.lock().unwrap().spans.clone()
    }

    pub fn spans_named(&self, name: &str) -> Vec<SpanRec> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// The index (as used by `parent` and `follows`) of a span.
    pub fn index(&self, span: &SpanRec) -> usize {
        self.spans()
            .iter()
            .position(|s| s.id == span.id && s.fields == span.fields && s.name == span.name)
            .expect("a captured span")
    }

    pub fn events(&self) -> Vec<EventRec> {
        self.0.lock().unwrap().events.clone()
    }

    /// The cache's own events whose message starts with `prefix`.
    pub fn events_starting(&self, prefix: &str) -> Vec<EventRec> {
        self.events()
            .into_iter()
            .filter(|e| e.target == "tower_tiered_cache" && e.message.starts_with(prefix))
            .collect()
    }

    /// How many events (of any target) at `level` have a message containing
    /// `text`.
    pub fn events_with(&self, level: Level, text: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.level == level && e.message.contains(text))
            .count()
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        let parent_id = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        let mut c = self.0.lock().unwrap();
        let parent = parent_id.and_then(|p| c.index_of(p));
        c.spans.push(SpanRec {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            level: *attrs.metadata().level(),
            parent,
            follows: Vec::new(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut c = self.0.lock().unwrap();
        if let Some(i) = c.index_of(id.into_u64()) {
            values.record(&mut Visitor(&mut c.spans[i].fields));
        }
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, _ctx: Context<'_, S>) {
        let mut c = self.0.lock().unwrap();
        if let (Some(i), Some(f)) = (c.index_of(span.into_u64()), c.index_of(follows.into_u64())) {
            c.spans[i].follows.push(f);
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        let message = match fields.remove("message") {
            Some(Val::Str(s)) => s,
            _ => String::new(),
        };
        self.0.lock().unwrap().events.push(EventRec {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message,
            fields,
        });
    }
}

/// A subscriber set as this thread's default while the value lives.
///
/// `tracing-core` caches each callsite's interest when the callsite is
/// first hit. While only one dispatcher is registered it asks just the
/// *hitting thread's* default: a test on another thread, without a
/// subscriber, would then cache "never" for a callsite (say, the Redis
/// client span) this test needs. A second live dispatcher, registered
/// first, makes it ask every registered dispatcher.
pub struct Installed {
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

pub fn install(subscriber: impl Subscriber + Send + Sync + 'static) -> Installed {
    let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    Installed {
        _default: tracing::subscriber::set_default(subscriber),
        _second: second,
    }
}

/// A capturing subscriber, the default on this thread while the guard lives.
pub fn capture() -> (Capture, Installed) {
    let c = Capture::default();
    let installed = install(tracing_subscriber::registry().with(c.clone()));
    (c, installed)
}
