//! Event time: durations as users write them (`500ms`, `10s`, `1m`), the event-time
//! strategy of a source, and the watermark generator that tracks each split's bounded
//! out-of-orderness, leaves idle splits out, and combines splits and inputs by minimum.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::error::{EngineError, Result};
use crate::message::{EventTime, Watermark};

/// Parses a duration such as `500ms`, `10s`, `1m`, `2h`, `1h 30m`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not a duration ({e}); write e.g. `500ms`, `10s`, `1m`, `2h`")
    })
}

/// Formats a duration the way users write it (`10s`, `1m`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Field metadata key marking a stream's event-time column (Flink's "rowtime
/// attribute"). Sources with `event_time` mark their field; steps that pass a column
/// through keep its metadata; windows mark `window_end`. Time-based steps use the marked
/// column unless told otherwise.
pub const EVENT_TIME_METADATA: &str = "weir.event_time";

/// `schema` with `field` marked as the event-time column (and no other).
pub fn mark_event_time(schema: &Schema, field: &str) -> arrow::datatypes::SchemaRef {
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut meta = f.metadata().clone();
            if f.name() == field {
                meta.insert(EVENT_TIME_METADATA.to_string(), "true".to_string());
            } else {
                meta.remove(EVENT_TIME_METADATA);
            }
            f.as_ref().clone().with_metadata(meta)
        })
        .collect();
    std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The index of the event-time column of `schema`: the field marked with
/// [`EVENT_TIME_METADATA`], else the only timestamp field, else `None`.
pub fn event_time_column(schema: &Schema) -> Option<usize> {
    let marked = schema
        .fields()
        .iter()
        .position(|f| f.metadata().contains_key(EVENT_TIME_METADATA));
    marked.or_else(|| {
        let ts: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.data_type(), DataType::Timestamp(_, _)))
            .map(|(i, _)| i)
            .collect();
        (ts.len() == 1).then(|| ts[0])
    })
}

/// How far ahead of the wall clock a record's event time may be. One record from the
/// far future (a typo, year 9999) would otherwise move the watermark so far that every
/// later record is late; beyond the bound it goes to the dead-letter output instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FutureBound {
    /// Not set: the source type's default (file sources:
    /// [`DEFAULT_FILE_MAX_FUTURE`]; others: no bound).
    #[default]
    SourceDefault,
    /// No bound (`max_future: none`).
    Off,
    /// At most this far ahead of the wall clock.
    At(Duration),
}

/// The default [`FutureBound`] of file sources: a day ahead of the wall clock.
pub const DEFAULT_FILE_MAX_FUTURE: Duration = Duration::from_secs(86_400);

/// Which column carries event time and how far records may be out of order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeConfig {
    /// The timestamp column.
    pub field: String,
    /// Bounded out-of-orderness: the watermark trails the largest event time by this.
    pub max_out_of_orderness: Duration,
    /// A split with no data for this long is left out of the watermark.
    pub idle_timeout: Option<Duration>,
    /// How far ahead of the wall clock an event time may be (`max_future`).
    pub max_future: FutureBound,
}

impl std::fmt::Display for EventTimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event time {} (out-of-orderness {}",
            self.field,
            format_duration(self.max_out_of_orderness)
        )?;
        if let Some(t) = self.idle_timeout {
            write!(f, ", idle after {}", format_duration(t))?;
        }
        if let FutureBound::At(d) = self.max_future {
            write!(f, ", at most {} ahead", format_duration(d))?;
        }
        write!(f, ")")
    }
}

impl EventTimeConfig {
    /// The bound on event times ahead of the wall clock, in ms, if there is one.
    pub fn max_future_ms(&self) -> Option<i64> {
        match self.max_future {
            FutureBound::At(d) => Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            FutureBound::SourceDefault | FutureBound::Off => None,
        }
    }

    /// Checks that `field` exists in `schema` and is a timestamp or an integer (ms).
    pub fn check(&self, schema: &Schema) -> std::result::Result<(), String> {
        let f = schema.field_with_name(&self.field).map_err(|_| {
            format!(
                "event time field `{}` is not in the schema (fields: {})",
                self.field,
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        match f.data_type() {
            DataType::Timestamp(_, _) | DataType::Int64 => Ok(()),
            other => Err(format!(
                "event time field `{}` must be a timestamp (or int64 milliseconds), not {other}",
                self.field
            )),
        }
    }
}

/// Reads the event times of a batch's column as milliseconds since the epoch. Nulls are
/// `None`.
pub fn event_times_ms(batch: &RecordBatch, field: &str) -> Result<Vec<Option<EventTime>>> {
    let col = batch.column_by_name(field).ok_or_else(|| {
        EngineError::Config(format!("event time field `{field}` missing from batch"))
    })?;
    let factor_div: (i64, i64) = match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => (1000, 1),
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => (1, 1),
        DataType::Timestamp(TimeUnit::Microsecond, _) => (1, 1000),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => (1, 1_000_000),
        other => {
            return Err(EngineError::Config(format!(
                "event time field `{field}` has type {other}, expected a timestamp"
            )))
        }
    };
    let values = match col.data_type() {
        DataType::Int64 => col.as_primitive::<arrow::datatypes::Int64Type>().clone(),
        _ => {
            let c = arrow::compute::cast(col, &DataType::Int64)
                .map_err(|e| EngineError::arrow("reading event time", e))?;
            c.as_primitive::<arrow::datatypes::Int64Type>().clone()
        }
    };
    let (mul, div) = factor_div;
    Ok(values
        .iter()
        .map(|v| v.map(|x| x.saturating_mul(mul).div_euclid(div)))
        .collect())
}

/// The largest event time in a batch, in ms.
pub fn max_event_time(batch: &RecordBatch, field: &str) -> Result<Option<EventTime>> {
    Ok(event_times_ms(batch, field)?.into_iter().flatten().max())
}

#[derive(Debug)]
struct SplitState {
    max_ts: Option<EventTime>,
    last_active: Instant,
    /// Assigned but not read yet: holds the watermark back and is never idle.
    pending: bool,
}

/// Generates a source subtask's watermark from its splits: each split's watermark is
/// its largest event time minus the out-of-orderness (minus 1 ms, so that records *at*
/// the bound are still on time); the subtask's is the minimum over active splits.
#[derive(Debug)]
pub struct WatermarkGenerator {
    config: EventTimeConfig,
    splits: BTreeMap<u32, SplitState>,
    emitted: Option<Watermark>,
    last_wm: EventTime,
}

impl WatermarkGenerator {
    /// A generator for `config`.
    pub fn new(config: EventTimeConfig) -> Self {
        WatermarkGenerator {
            config,
            splits: BTreeMap::new(),
            emitted: None,
            last_wm: EventTime::MIN,
        }
    }

    /// The event-time configuration.
    pub fn config(&self) -> &EventTimeConfig {
        &self.config
    }

    /// Records the batch's event times for `split`.
    pub fn observe(&mut self, split: u32, batch: &RecordBatch, now: Instant) -> Result<()> {
        let max = max_event_time(batch, &self.config.field)?;
        self.observe_max(split, max, now);
        Ok(())
    }

    /// Registers a split that will be read later: until it yields data it holds the
    /// watermark back (at the start of time) and is not subject to the idle timeout.
    pub fn register_pending(&mut self, split: u32, now: Instant) {
        self.splits.entry(split).or_insert(SplitState {
            max_ts: None,
            last_active: now,
            pending: true,
        });
    }

    /// Registers a split that exists but has yielded nothing yet (a new Kafka
    /// partition): it holds the watermark back like any split without data, and drops
    /// out after the idle timeout like any quiet one.
    pub fn register_assigned(&mut self, split: u32, now: Instant) {
        self.splits.entry(split).or_insert(SplitState {
            max_ts: None,
            last_active: now,
            pending: false,
        });
    }

    /// Records the largest event time seen in `split` (None: data without time).
    pub fn observe_max(&mut self, split: u32, max: Option<EventTime>, now: Instant) {
        let st = self.splits.entry(split).or_insert(SplitState {
            max_ts: None,
            last_active: now,
            pending: false,
        });
        st.last_active = now;
        st.pending = false;
        if let Some(m) = max {
            st.max_ts = Some(st.max_ts.map_or(m, |x| x.max(m)));
        }
    }

    /// A split has ended: it no longer holds the watermark back.
    pub fn split_ended(&mut self, split: u32) {
        self.splits.remove(&split);
    }

    /// The watermark to emit now, if it changed since the last call. Watermarks never go
    /// back.
    pub fn poll(&mut self, now: Instant) -> Option<Watermark> {
        let ooo = i64::try_from(self.config.max_out_of_orderness.as_millis()).unwrap_or(i64::MAX);
        let mut min: Option<EventTime> = None;
        let mut any_active = false;
        for st in self.splits.values() {
            let idle = !st.pending
                && self
                    .config
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(st.last_active) >= t);
            if idle {
                continue;
            }
            any_active = true;
            let wm = st
                .max_ts
                .map_or(EventTime::MIN, |m| m.saturating_sub(ooo).saturating_sub(1));
            min = Some(min.map_or(wm, |x: EventTime| x.min(wm)));
        }
        let next = if !any_active {
            if self.splits.is_empty() {
                return None;
            }
            // Every split is idle. What the splits with data had reached comes first: had
            // a poll fallen between a split without data going idle and the last one, it
            // would have been emitted, and the windows it closes must not wait for the
            // timing of polls (a stream that goes quiet would otherwise stall them).
            let reached = self
                .splits
                .values()
                .filter_map(|st| st.max_ts)
                .map(|m| m.saturating_sub(ooo).saturating_sub(1))
                .min();
            match reached {
                Some(wm) if wm > self.last_wm => {
                    self.last_wm = wm;
                    Watermark::EventTime(wm)
                }
                _ => Watermark::Idle,
            }
        } else {
            let wm = min.unwrap_or(EventTime::MIN).max(self.last_wm);
            if wm == EventTime::MIN {
                return None;
            }
            self.last_wm = wm;
            Watermark::EventTime(wm)
        };
        if self.emitted == Some(next) {
            None
        } else {
            self.emitted = Some(next);
            Some(next)
        }
    }
}

/// Combines the watermarks of several inputs: the minimum over inputs that are not idle
/// and not finished. Used by every subtask with more than one input channel and by
/// two-input operators.
#[derive(Debug, Clone)]
pub struct WatermarkCombiner {
    inputs: Vec<InputWm>,
    current: EventTime,
}

#[derive(Debug, Clone, Copy)]
enum InputWm {
    At(EventTime),
    Idle(EventTime),
    Done,
}

impl WatermarkCombiner {
    /// A combiner over `n` inputs, all at the start of time.
    pub fn new(n: usize) -> Self {
        WatermarkCombiner {
            inputs: vec![InputWm::At(EventTime::MIN); n],
            current: EventTime::MIN,
        }
    }

    /// The combined watermark so far.
    pub fn current(&self) -> EventTime {
        self.current
    }

    /// Whether every input is idle (or done, with at least one idle).
    pub fn all_idle(&self) -> bool {
        self.inputs
            .iter()
            .all(|w| matches!(w, InputWm::Idle(_) | InputWm::Done))
            && self.inputs.iter().any(|w| matches!(w, InputWm::Idle(_)))
    }

    /// Input `i` sent data: an idle input is active again.
    pub fn mark_active(&mut self, i: usize) {
        if let Some(InputWm::Idle(t)) = self.inputs.get(i).copied() {
            self.inputs[i] = InputWm::At(t);
        }
    }

    /// Input `i` ended; returns the new combined watermark if it advanced.
    pub fn finish(&mut self, i: usize) -> Option<EventTime> {
        if let Some(w) = self.inputs.get_mut(i) {
            *w = InputWm::Done;
        }
        self.recompute()
    }

    /// Input `i` sent `wm`; returns the new combined watermark if it advanced.
    pub fn update(&mut self, i: usize, wm: Watermark) -> Option<EventTime> {
        let slot = self.inputs.get_mut(i)?;
        let prev = match *slot {
            InputWm::At(t) | InputWm::Idle(t) => t,
            InputWm::Done => return None,
        };
        *slot = match wm {
            Watermark::EventTime(t) => InputWm::At(t.max(prev)),
            Watermark::Idle => InputWm::Idle(prev),
        };
        self.recompute()
    }

    fn recompute(&mut self) -> Option<EventTime> {
        let active = self.inputs.iter().filter_map(|w| match w {
            InputWm::At(t) => Some(*t),
            _ => None,
        });
        let min = active.min();
        let next = match min {
            Some(t) => t,
            None => {
                // No active input: all done → end of time; all idle → hold.
                if self.inputs.iter().all(|w| matches!(w, InputWm::Done)) {
                    EventTime::MAX
                } else {
                    return None;
                }
            }
        };
        if next > self.current {
            self.current = next;
            Some(next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMillisecondArray;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    fn cfg(idle: Option<u64>) -> EventTimeConfig {
        EventTimeConfig {
            field: "ts".into(),
            max_out_of_orderness: Duration::from_millis(100),
            idle_timeout: idle.map(Duration::from_millis),
            max_future: Default::default(),
        }
    }

    fn batch(ts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        )]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(TimestampMillisecondArray::from(ts.to_vec()))],
        )
        .expect("batch")
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("ten seconds").is_err());
    }

    #[test]
    fn watermark_trails_max_by_out_of_orderness_and_never_regresses() {
        let mut g = WatermarkGenerator::new(cfg(None));
        let now = Instant::now();
        g.observe(0, &batch(&[1000, 3000, 2000]), now)
            .expect("observe");
        assert_eq!(g.poll(now), Some(Watermark::EventTime(2899)));
        g.observe(0, &batch(&[500]), now).expect("observe");
        assert_eq!(g.poll(now), None);
    }

    #[test]
    fn min_over_splits_and_idle_split_excluded() {
        let mut g = WatermarkGenerator::new(cfg(Some(1000)));
        let t0 = Instant::now();
        g.observe(0, &batch(&[10_000]), t0).expect("observe");
        g.observe(1, &batch(&[2_000]), t0).expect("observe");
        assert_eq!(g.poll(t0), Some(Watermark::EventTime(1899)));
        // Split 0 keeps producing; split 1 goes quiet past the idle timeout.
        let t1 = t0 + Duration::from_millis(1500);
        g.observe(0, &batch(&[20_000]), t1).expect("observe");
        assert_eq!(g.poll(t1), Some(Watermark::EventTime(19_899)));
        // Every split idle: the subtask reports idleness.
        let t2 = t1 + Duration::from_millis(1500);
        assert_eq!(g.poll(t2), Some(Watermark::Idle));
        // Split 1 wakes up behind: the watermark does not go back.
        g.observe(1, &batch(&[3_000]), t2).expect("observe");
        assert_eq!(g.poll(t2), Some(Watermark::EventTime(19_899)));
    }

    /// An empty split and the split with data go idle between two polls: the watermark
    /// the data reached is emitted before idleness, whatever the timing of the polls.
    #[test]
    fn splits_going_idle_between_two_polls_still_emit_what_the_data_reached() {
        let mut g = WatermarkGenerator::new(cfg(Some(1000)));
        let t0 = Instant::now();
        g.register_assigned(1, t0);
        g.observe(0, &batch(&[10_000]), t0 + Duration::from_millis(10))
            .expect("observe");
        // The empty split holds the watermark while it is not idle.
        assert_eq!(g.poll(t0 + Duration::from_millis(20)), None);
        // The next poll comes after both went idle.
        let late = t0 + Duration::from_millis(2_000);
        assert_eq!(g.poll(late), Some(Watermark::EventTime(9_899)));
        assert_eq!(g.poll(late), Some(Watermark::Idle));
        assert_eq!(g.poll(late), None);
    }

    #[test]
    fn a_split_not_read_yet_holds_the_watermark_and_never_idles() {
        let mut g = WatermarkGenerator::new(cfg(Some(10)));
        let t0 = Instant::now();
        g.register_pending(0, t0);
        g.register_pending(1, t0);
        // File 0 runs far ahead while file 1 waits its turn.
        g.observe(0, &batch(&[50_000]), t0).expect("observe");
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            g.poll(later),
            None,
            "pending split 1 must hold the watermark"
        );
        g.split_ended(0);
        g.observe(1, &batch(&[1_000]), later).expect("observe");
        assert_eq!(g.poll(later), Some(Watermark::EventTime(899)));
    }

    #[test]
    fn huge_out_of_orderness_does_not_wrap() {
        let mut g = WatermarkGenerator::new(EventTimeConfig {
            field: "ts".into(),
            max_out_of_orderness: Duration::from_secs(u64::MAX / 2),
            idle_timeout: None,
            max_future: Default::default(),
        });
        let now = Instant::now();
        g.observe(0, &batch(&[1_000]), now).expect("observe");
        // Saturates near the start of time instead of wrapping into the future.
        match g.poll(now) {
            None => {}
            Some(Watermark::EventTime(w)) => assert!(w < 0, "watermark wrapped to {w}"),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn combiner_takes_min_and_skips_idle_inputs() {
        let mut c = WatermarkCombiner::new(2);
        assert_eq!(c.update(0, Watermark::EventTime(100)), None);
        assert_eq!(c.update(1, Watermark::EventTime(50)), Some(50));
        assert_eq!(c.update(1, Watermark::Idle), Some(100));
        c.mark_active(1);
        assert_eq!(c.update(0, Watermark::EventTime(200)), None);
        assert_eq!(c.update(1, Watermark::EventTime(300)), Some(200));
        assert_eq!(c.finish(0), Some(300));
        assert_eq!(c.finish(1), Some(EventTime::MAX));
    }
}
