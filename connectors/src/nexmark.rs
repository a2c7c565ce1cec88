//! The Nexmark source (`type: nexmark`): the persons, auctions and bids of the Nexmark
//! benchmark, generated deterministically after Apache Beam's `NexmarkGenerator` (and
//! the Nexmark-Flink generator that descends from it).
//!
//! **One global event sequence.** Events are numbered `0, 1, 2, …`; in every block of 50
//! events, event 0 is a person, events 1–3 are auctions and events 4–49 are bids
//! (proportions 1 : 3 : 46). A source emits one `table` only (`person`, `auction` or
//! `bid`), but the numbering is global: two sources of one job with the same `seed`,
//! `events` and `event_gap` see one consistent stream (a bid's `auction` is an auction
//! that the auction source emits, and so on). `events` counts the global sequence, all
//! tables together. Event `n` happens at `start + n × event_gap`.
//!
//! **Ids.** Person ids are `1000 + ` the number of persons before, auction ids `1000 +`
//! the number of auctions before, as in Beam. Every reference is to an entity that
//! already exists (Beam also picks a few ids up to 10 ahead; we do not, so that joins
//! always find their partner):
//! - an auction's `seller` is, with probability 3/4, the *hot seller* (the first person
//!   of the latest block of 100 persons), else a person among the latest 1,000;
//! - a bid's `auction` is, with probability 1/2, the *hot auction* (the first auction
//!   of the latest block of 100 auctions), else an auction among the latest 100;
//! - a bid's `bidder` is, with probability 3/4, the *hot bidder* (the second person of
//!   the latest block of 100 persons, or the first while that block has one person),
//!   else a person among the latest 1,000.
//!
//! These are Beam's defaults (`hotSellersRatio = 4`, `hotAuctionRatio = 2`,
//! `hotBiddersRatio = 4`, `HOT_*_RATIO = 100`, `numActivePeople = 1000`,
//! `numInFlightAuctions = 100`). Prices are `round(10^(6u) × 100)` for `u` uniform in
//! `[0, 1)`; an auction expires `1 + uniform[0, 2h)` ms after it starts, `h` being the
//! event time of 100 × 50 / 3 events; a bid's channel is one of four hot channels
//! (`Google`, `Facebook`, `Baidu`, `Apple`) half of the time, else one of
//! `channel-0` … `channel-9999`, each with a fixed URL. Strings (names, descriptions,
//! e-mail parts, `extra`) are cut from two pools of random letters drawn from the seed,
//! at random offsets and with Beam's lengths; `extra` pads rows to Beam's average sizes
//! (person 200, auction 500, bid 100 bytes).
//!
//! **Determinism and parallelism.** Every value of event `n` is derived from
//! `(seed, n)` only. Subtask `s` of `p` emits the events `k ≡ s (mod p)` of its table,
//! `k` numbering the table's events (the `k`-th bid, …), so the rows are the same
//! whatever the parallelism; only who emits them changes. With a `rate` (events per
//! second of the global sequence, over all subtasks), event `n` is due `n / rate`
//! seconds after the start; a bid source then emits about `0.92 × rate` rows per
//! second. The source sleeps on tokio's clock until rows are due, it never spins.
//!
//! A subtask's position is the global number of its next event. It restores with the
//! same parallelism only (the default [`Source::restore_all`] refuses another one), as
//! datagen does.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringBuilder, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use weir_engine::error::{EngineError, Result};
use weir_engine::registry::{BuildContext, FieldError, SourceBuild, SourceFactory};
use weir_engine::source::{Source, SourceContext, SourcePoll};

use crate::options::{kind_of, parse_options, schema_for};
use crate::rng::{stride_at_or_after, Rng};

/// Events per block: 1 person, 3 auctions, 46 bids.
const PROPORTION: u64 = 50;
/// Persons per block.
const PERSONS: u64 = 1;
/// Auctions per block.
const AUCTIONS: u64 = 3;
/// Bids per block.
const BIDS: u64 = 46;
/// Id of the first person.
const FIRST_PERSON_ID: i64 = 1000;
/// Id of the first auction.
const FIRST_AUCTION_ID: i64 = 1000;
/// First category id; categories are `10..15`.
const FIRST_CATEGORY_ID: i64 = 10;
/// Number of categories.
const NUM_CATEGORIES: u64 = 5;
/// Hot sellers, bidders and auctions are the first (second) of a block of this many.
const HOT_BLOCK: u64 = 100;
/// An auction's seller is hot with probability `1 - 1/HOT_SELLERS_RATIO`.
const HOT_SELLERS_RATIO: u64 = 4;
/// A bid's auction is hot with probability `1 - 1/HOT_AUCTION_RATIO`.
const HOT_AUCTION_RATIO: u64 = 2;
/// A bid's bidder is hot with probability `1 - 1/HOT_BIDDERS_RATIO`.
const HOT_BIDDERS_RATIO: u64 = 4;
/// Cold sellers and bidders are among the latest this many persons.
const NUM_ACTIVE_PEOPLE: u64 = 1000;
/// Cold auctions of bids are among the latest this many auctions.
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
/// A bid's channel is hot with probability `1 - 1/HOT_CHANNELS_RATIO`.
const HOT_CHANNELS_RATIO: u64 = 2;
/// Number of cold channels.
const CHANNELS: usize = 10_000;
/// Average sizes of rows in bytes, which `extra` pads to.
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
/// Shortest random string.
const MIN_STRING_LENGTH: u64 = 3;
/// Length of the string pools.
const POOL_LEN: usize = 1 << 16;
/// Default first event time: 2024-01-01T00:00:00Z, in ns since the epoch.
const DEFAULT_START_NS: i128 = 1_704_067_200_000_000_000;
/// Default time between events: 1 ms.
const DEFAULT_GAP_NS: i128 = 1_000_000;
/// Longest sleep inside one poll; a longer wait is handed back as `Pending`.
const MAX_SLEEP: Duration = Duration::from_millis(100);

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// The Nexmark tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// New persons: id, name, email_address, credit_card, city, state, date_time, extra.
    Person,
    /// New auctions: id, item_name, description, initial_bid, reserve, date_time,
    /// expires, seller, category, extra.
    Auction,
    /// Bids: auction, bidder, price, channel, url, date_time, extra.
    Bid,
}

impl Table {
    /// The YAML name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Person => "person",
            Table::Auction => "auction",
            Table::Bid => "bid",
        }
    }

    /// The table's columns.
    pub fn schema(self) -> SchemaRef {
        let int = |n: &str| Field::new(n, DataType::Int64, false);
        let string = |n: &str| Field::new(n, DataType::Utf8, false);
        let time = |n: &str| Field::new(n, DataType::Timestamp(TimeUnit::Millisecond, None), false);
        let fields = match self {
            Table::Person => vec![
                int("id"),
                string("name"),
                string("email_address"),
                string("credit_card"),
                string("city"),
                string("state"),
                time("date_time"),
                string("extra"),
            ],
            Table::Auction => vec![
                int("id"),
                string("item_name"),
                string("description"),
                int("initial_bid"),
                int("reserve"),
                time("date_time"),
                time("expires"),
                int("seller"),
                int("category"),
                string("extra"),
            ],
            Table::Bid => vec![
                int("auction"),
                int("bidder"),
                int("price"),
                string("channel"),
                string("url"),
                time("date_time"),
                string("extra"),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    /// Events of this table per block of 50, and the offset of the first in the block.
    fn share(self) -> (u64, u64) {
        match self {
            Table::Person => (PERSONS, 0),
            Table::Auction => (AUCTIONS, PERSONS),
            Table::Bid => (BIDS, PERSONS + AUCTIONS),
        }
    }

    /// The global number of the table's `k`-th event (saturating).
    pub fn event_of(self, k: u64) -> u64 {
        let (per, first) = self.share();
        (k / per)
            .saturating_mul(PROPORTION)
            .saturating_add(first + k % per)
    }

    /// How many events of the table come before global event `n`.
    pub fn count_before(self, n: u64) -> u64 {
        let (per, first) = self.share();
        let (blocks, offset) = (n / PROPORTION, n % PROPORTION);
        blocks * per + offset.saturating_sub(first).min(per)
    }

    /// The table of global event `n`.
    pub fn of_event(n: u64) -> Table {
        match n % PROPORTION {
            0 => Table::Person,
            o if o < PERSONS + AUCTIONS => Table::Auction,
            _ => Table::Bid,
        }
    }
}

/// Options of `type: nexmark` sources.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NexmarkOptions {
    /// Which table this source emits: `person`, `auction` or `bid`. Event numbers are
    /// global, so sources of different tables with the same seed, events and event gap
    /// form one consistent stream.
    table: Table,
    /// Total number of events of the global sequence (all tables: 1/50 persons, 3/50
    /// auctions, 46/50 bids). Absent: unbounded.
    events: Option<u64>,
    /// Seed of the random values (default 0). The same seed always gives the same
    /// rows, whatever the parallelism.
    #[serde(default)]
    seed: u64,
    /// Events per second of the global sequence, over all subtasks (wall clock).
    /// Absent: as fast as possible.
    #[schemars(range(min = 0))]
    rate: Option<f64>,
    /// Event time between two consecutive events of the global sequence, a duration
    /// such as `1ms` (the default) or `100us`.
    event_gap: Option<String>,
    /// Event time of event 0, as RFC 3339 (`2024-01-01T00:00:00Z`, the default) or
    /// epoch milliseconds.
    #[schemars(with = "Option<StartSchema>")]
    start: Option<Value>,
}

/// Only for the JSON Schema of `start`: RFC 3339 text or epoch milliseconds.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum StartSchema {
    /// RFC 3339 timestamp.
    Text(String),
    /// Epoch milliseconds.
    Millis(i64),
}

/// Parses a timestamp: RFC 3339 text or epoch milliseconds; returns ns.
fn time_value(v: &Value, path: &str) -> Result<i128, FieldError> {
    match v {
        Value::String(s) => arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s)
            .map(i128::from)
            .map_err(|e| {
                FieldError::at(
                    path,
                    format!(
                        "`{s}` is not an RFC 3339 timestamp such as `2024-01-01T00:00:00Z` ({e})"
                    ),
                )
            }),
        Value::Number(n) => n
            .as_i64()
            .map(|ms| i128::from(ms) * 1_000_000)
            .ok_or_else(|| FieldError::at(path, "expected epoch milliseconds (an integer)")),
        other => Err(FieldError::at(
            path,
            format!(
                "expected an RFC 3339 timestamp or epoch milliseconds, found {}",
                kind_of(other)
            ),
        )),
    }
}

impl Rng {
    /// Beam's price: `round(10^(6u) × 100)`, from 100 to 100,000,000.
    fn price(&mut self) -> i64 {
        (10f64.powf(self.next_f64() * 6.0) * 100.0).round() as i64
    }
}

/// Random-stream ids, so that the pools and the events draw independent values.
const EVENT_STREAM: u64 = 0x6576_656e_7473;
const WORDS_STREAM: u64 = 0x0077_6f72_6473;
const LETTERS_STREAM: u64 = 0x006c_6574_7465_7273;
const CHANNEL_STREAM: u64 = 0x6368_616e_6e65_6c73;

/// ASCII text from which strings are cut, drawn from the seed.
#[derive(Debug)]
struct Pools {
    /// Lower-case letters with a space 1 time in 13 (Beam's `nextString`).
    words: String,
    /// Lower-case letters only (Beam's `nextExactString`, for `extra`).
    letters: String,
}

impl Pools {
    fn new(seed: u64) -> Self {
        let mut w = Rng::new(seed, WORDS_STREAM, 0);
        let words = (0..POOL_LEN)
            .map(|_| {
                if w.below(13) == 0 {
                    ' '
                } else {
                    char::from(b'a' + w.below(26) as u8)
                }
            })
            .collect();
        let mut l = Rng::new(seed, LETTERS_STREAM, 0);
        let letters = (0..POOL_LEN)
            .map(|_| char::from(b'a' + l.below(26) as u8))
            .collect();
        Pools { words, letters }
    }

    /// Beam's `nextString(max_len)`: `3..max_len` characters, trimmed.
    fn string(&self, r: &mut Rng, max_len: u64) -> &str {
        let len = (MIN_STRING_LENGTH + r.below(max_len - MIN_STRING_LENGTH)) as usize;
        let off = r.index(POOL_LEN - len);
        // The pool is ASCII: every offset is a char boundary.
        self.words.get(off..off + len).unwrap_or("").trim()
    }

    /// Beam's `nextExtra`: letters that bring a row of `current` bytes to `avg` bytes
    /// on average (±20 %).
    fn extra(&self, r: &mut Rng, current: usize, avg: usize) -> &str {
        if current > avg {
            return "";
        }
        let want = avg - current;
        let delta = (want as f64 * 0.2).round() as usize;
        let len = want - delta + if delta == 0 { 0 } else { r.index(2 * delta) };
        let len = len.min(POOL_LEN - 1);
        let off = r.index(POOL_LEN - len);
        self.letters.get(off..off + len).unwrap_or("")
    }
}

/// Everything the subtasks of one nexmark source share.
#[derive(Debug)]
pub struct NexmarkConfig {
    table: Table,
    schema: SchemaRef,
    seed: u64,
    /// Events of this table (`None`: unbounded).
    table_total: Option<u64>,
    rate: Option<f64>,
    start_ns: i128,
    gap_ns: i128,
    /// Auctions last `1 + uniform[0, auction_span)` ms.
    auction_span: u64,
    pools: Pools,
    /// `first last` for every pair of names.
    names: Vec<String>,
    /// Bids: the hot channels' URLs.
    hot_urls: Vec<String>,
    /// Bids: the cold channels' names and URLs.
    channels: Vec<(String, String)>,
}

/// The latest person (base 0) at global event `n`: the current one for a person event.
fn last_person(n: u64) -> u64 {
    n / PROPORTION
}

/// The latest auction (base 0) at global event `n` (not a person event of block 0):
/// the current one for an auction event.
fn last_auction(n: u64) -> u64 {
    Table::Auction.count_before(n + 1).saturating_sub(1)
}

/// A person among the latest `NUM_ACTIVE_PEOPLE` (base 0).
fn cold_person(n: u64, r: &mut Rng) -> u64 {
    let people = last_person(n) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + r.below(active)
}

impl NexmarkConfig {
    fn new(
        table: Table,
        seed: u64,
        events: Option<u64>,
        rate: Option<f64>,
        start_ns: i128,
        gap_ns: i128,
    ) -> Self {
        // Beam: the time until `numInFlightAuctions` more auctions exist, doubled.
        let horizon_ns = gap_ns * i128::from(NUM_IN_FLIGHT_AUCTIONS * PROPORTION / AUCTIONS);
        let auction_span = u64::try_from(2 * horizon_ns / 1_000_000)
            .unwrap_or(u64::MAX)
            .max(1);
        let pools = Pools::new(seed);
        let names = FIRST_NAMES
            .iter()
            .flat_map(|f| LAST_NAMES.iter().map(move |l| format!("{f} {l}")))
            .collect();
        let (hot_urls, channels) = if table == Table::Bid {
            let mut r = Rng::new(seed, CHANNEL_STREAM, u64::MAX);
            let hot = (0..HOT_CHANNELS.len())
                .map(|_| base_url(&pools, &mut r))
                .collect();
            let cold = (0..CHANNELS)
                .map(|c| {
                    let mut r = Rng::new(seed, CHANNEL_STREAM, c as u64);
                    let mut url = base_url(&pools, &mut r);
                    if r.below(10) > 0 {
                        url.push_str(&format!("&channel_id={}", (c as u32).reverse_bits()));
                    }
                    (format!("channel-{c}"), url)
                })
                .collect();
            (hot, cold)
        } else {
            (Vec::new(), Vec::new())
        };
        NexmarkConfig {
            table,
            schema: table.schema(),
            seed,
            table_total: events.map(|e| table.count_before(e)),
            rate,
            start_ns,
            gap_ns,
            auction_span,
            pools,
            names,
            hot_urls,
            channels,
        }
    }

    /// Event time of global event `n`, in ms (floor), clamped to `i64`.
    fn time_ms(&self, n: u64) -> i64 {
        (self.start_ns + i128::from(n) * self.gap_ns)
            .div_euclid(1_000_000)
            .clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }

    fn rng(&self, n: u64) -> Rng {
        Rng::new(self.seed, EVENT_STREAM, n)
    }

    /// The rows of the global events `events` (all of this config's table).
    fn batch(&self, events: &[u64]) -> Result<RecordBatch> {
        let cols = match self.table {
            Table::Person => self.persons(events),
            Table::Auction => self.auctions(events),
            Table::Bid => self.bids(events),
        };
        RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| EngineError::arrow("building a nexmark batch", e))
    }

    fn persons(&self, events: &[u64]) -> Vec<ArrayRef> {
        let rows = events.len();
        let mut id = Vec::with_capacity(rows);
        let mut name = StringBuilder::with_capacity(rows, rows * 12);
        let mut email = StringBuilder::with_capacity(rows, rows * 16);
        let mut card = StringBuilder::with_capacity(rows, rows * 19);
        let mut city = StringBuilder::with_capacity(rows, rows * 8);
        let mut state = StringBuilder::with_capacity(rows, rows * 2);
        let mut time = Vec::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * AVG_PERSON_BYTES);
        let mut buf = String::with_capacity(32);
        for &n in events {
            let mut r = self.rng(n);
            id.push(FIRST_PERSON_ID + last_person(n) as i64);
            let nm = &self.names[r.index(self.names.len())];
            name.append_value(nm);
            buf.clear();
            buf.push_str(self.pools.string(&mut r, 7));
            buf.push('@');
            buf.push_str(self.pools.string(&mut r, 5));
            buf.push_str(".com");
            email.append_value(&buf);
            let email_len = buf.len();
            buf.clear();
            for group in 0..4 {
                if group > 0 {
                    buf.push(' ');
                }
                let v = r.below(10_000) as u32;
                for div in [1000, 100, 10, 1] {
                    buf.push(char::from(b'0' + (v / div % 10) as u8));
                }
            }
            card.append_value(&buf);
            let c = US_CITIES[r.index(US_CITIES.len())];
            city.append_value(c);
            let s = US_STATES[r.index(US_STATES.len())];
            state.append_value(s);
            time.push(self.time_ms(n));
            let size = 8 + nm.len() + email_len + buf.len() + c.len() + s.len();
            extra.append_value(self.pools.extra(&mut r, size, AVG_PERSON_BYTES));
        }
        vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(name.finish()),
            Arc::new(email.finish()),
            Arc::new(card.finish()),
            Arc::new(city.finish()),
            Arc::new(state.finish()),
            Arc::new(TimestampMillisecondArray::from(time)),
            Arc::new(extra.finish()),
        ]
    }

    fn auctions(&self, events: &[u64]) -> Vec<ArrayRef> {
        let rows = events.len();
        let mut id = Vec::with_capacity(rows);
        let mut item = StringBuilder::with_capacity(rows, rows * 10);
        let mut desc = StringBuilder::with_capacity(rows, rows * 50);
        let mut initial = Vec::with_capacity(rows);
        let mut reserve = Vec::with_capacity(rows);
        let mut time = Vec::with_capacity(rows);
        let mut expires = Vec::with_capacity(rows);
        let mut seller = Vec::with_capacity(rows);
        let mut category = Vec::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * AVG_AUCTION_BYTES);
        for &n in events {
            let mut r = self.rng(n);
            id.push(FIRST_AUCTION_ID + last_auction(n) as i64);
            let s = if r.below(HOT_SELLERS_RATIO) > 0 {
                last_person(n) / HOT_BLOCK * HOT_BLOCK
            } else {
                cold_person(n, &mut r)
            };
            seller.push(FIRST_PERSON_ID + s as i64);
            category.push(FIRST_CATEGORY_ID + r.below(NUM_CATEGORIES) as i64);
            let bid = r.price();
            initial.push(bid);
            let t = self.time_ms(n);
            time.push(t);
            expires.push(t.saturating_add(1 + r.below(self.auction_span) as i64));
            let name = self.pools.string(&mut r, 20);
            item.append_value(name);
            let d = self.pools.string(&mut r, 100);
            desc.append_value(d);
            reserve.push(bid + r.price());
            let size = 8 + name.len() + d.len() + 8 * 5;
            extra.append_value(self.pools.extra(&mut r, size, AVG_AUCTION_BYTES));
        }
        vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(item.finish()),
            Arc::new(desc.finish()),
            Arc::new(Int64Array::from(initial)),
            Arc::new(Int64Array::from(reserve)),
            Arc::new(TimestampMillisecondArray::from(time)),
            Arc::new(TimestampMillisecondArray::from(expires)),
            Arc::new(Int64Array::from(seller)),
            Arc::new(Int64Array::from(category)),
            Arc::new(extra.finish()),
        ]
    }

    fn bids(&self, events: &[u64]) -> Vec<ArrayRef> {
        let rows = events.len();
        let mut auction = Vec::with_capacity(rows);
        let mut bidder = Vec::with_capacity(rows);
        let mut price = Vec::with_capacity(rows);
        let mut channel = StringBuilder::with_capacity(rows, rows * 10);
        let mut url = StringBuilder::with_capacity(rows, rows * 60);
        let mut time = Vec::with_capacity(rows);
        let mut extra = StringBuilder::with_capacity(rows, rows * AVG_BID_BYTES);
        for &n in events {
            let mut r = self.rng(n);
            let last = last_auction(n);
            let a = if r.below(HOT_AUCTION_RATIO) > 0 {
                last / HOT_BLOCK * HOT_BLOCK
            } else {
                let min = last.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
                min + r.below(last - min + 1)
            };
            auction.push(FIRST_AUCTION_ID + a as i64);
            let b = if r.below(HOT_BIDDERS_RATIO) > 0 {
                // The second person of the block (not the hot seller), once it exists.
                let lp = last_person(n);
                (lp / HOT_BLOCK * HOT_BLOCK + 1).min(lp)
            } else {
                cold_person(n, &mut r)
            };
            bidder.push(FIRST_PERSON_ID + b as i64);
            price.push(r.price());
            if r.below(HOT_CHANNELS_RATIO) > 0 {
                let i = r.index(HOT_CHANNELS.len());
                channel.append_value(HOT_CHANNELS[i]);
                url.append_value(&self.hot_urls[i]);
            } else {
                let (c, u) = &self.channels[r.index(self.channels.len())];
                channel.append_value(c);
                url.append_value(u);
            }
            time.push(self.time_ms(n));
            extra.append_value(self.pools.extra(&mut r, 32, AVG_BID_BYTES));
        }
        vec![
            Arc::new(Int64Array::from(auction)),
            Arc::new(Int64Array::from(bidder)),
            Arc::new(Int64Array::from(price)),
            Arc::new(channel.finish()),
            Arc::new(url.finish()),
            Arc::new(TimestampMillisecondArray::from(time)),
            Arc::new(extra.finish()),
        ]
    }
}

/// A Nexmark bid URL: `https://www.nexmark.com/xxx/yyy/zzz/item.htm?query=1`.
fn base_url(pools: &Pools, r: &mut Rng) -> String {
    let mut url = String::from("https://www.nexmark.com");
    for _ in 0..3 {
        url.push('/');
        let part = pools.string(r, 5).replace(' ', "_");
        url.push_str(&part);
    }
    url.push_str("/item.htm?query=1");
    url
}

/// Factory of `type: nexmark` sources.
#[derive(Debug, Default, Clone, Copy)]
pub struct NexmarkFactory;

impl SourceFactory for NexmarkFactory {
    fn name(&self) -> &'static str {
        "nexmark"
    }

    fn options_schema(&self) -> Value {
        schema_for::<NexmarkOptions>()
    }

    fn build(
        &self,
        _ctx: &BuildContext,
        name: &str,
        options: &Value,
        schema: Option<SchemaRef>,
    ) -> Result<SourceBuild, FieldError> {
        let opts: NexmarkOptions = parse_options(options)?;
        let table = opts.table;
        let fixed = table.schema();
        if let Some(given) = schema {
            let same = given.fields().len() == fixed.fields().len()
                && given
                    .fields()
                    .iter()
                    .zip(fixed.fields())
                    .all(|(g, f)| g.name() == f.name() && g.data_type() == f.data_type());
            if !same {
                return Err(FieldError::at(
                    "/schema",
                    format!(
                        "a nexmark `{}` source has a fixed schema ({}): leave `schema` out",
                        table.name(),
                        describe_schema(&fixed)
                    ),
                ));
            }
        }
        if let Some(rate) = opts.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(FieldError::at(
                    "/rate",
                    "rate must be a positive number of events per second",
                ));
            }
        }
        let gap_ns = match &opts.event_gap {
            Some(s) => weir_engine::time::parse_duration(s)
                .map(|d| d.as_nanos() as i128)
                .map_err(|m| FieldError::at("/event_gap", m))?,
            None => DEFAULT_GAP_NS,
        };
        let start_ns = match &opts.start {
            Some(v) => time_value(v, "/start")?,
            None => DEFAULT_START_NS,
        };
        let mut describe = format!("nexmark {}", table.name());
        match opts.events {
            Some(e) => describe.push_str(&format!(" of {e} events")),
            None => describe.push_str(", unbounded"),
        }
        if let Some(r) = opts.rate {
            describe.push_str(&format!(" at {r} events/s"));
        }
        describe.push_str(&format!(", seed {}", opts.seed));
        tracing::debug!(source = name, %describe, "nexmark source built");
        let config = Arc::new(NexmarkConfig::new(
            table,
            opts.seed,
            opts.events,
            opts.rate,
            start_ns,
            gap_ns,
        ));
        Ok(SourceBuild {
            schema: fixed,
            needs_format: false,
            bounded: opts.events.is_some(),
            describe,
            max_parallelism: None,
            create: Arc::new(move |ctx: &SourceContext| {
                Ok(Box::new(NexmarkSource::new(config.clone(), ctx)) as Box<dyn Source>)
            }),
        })
    }
}

/// `id: int, name: string, …` for messages.
fn describe_schema(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Int64 => "int",
                DataType::Utf8 => "string",
                _ => "timestamp",
            };
            format!("{}: {t}", f.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One subtask of a nexmark source.
#[derive(Debug)]
pub struct NexmarkSource {
    config: Arc<NexmarkConfig>,
    subtask: u64,
    parallelism: u64,
    /// Index among the table's events of the next one this subtask emits
    /// (`≡ subtask mod parallelism`).
    next: u64,
    batch_size: u64,
    linger: Duration,
    /// With a rate: when global event `base` was due (event `n` is due
    /// `(n - base) / rate` seconds later). Set at the first poll.
    clock: Option<(Instant, u64)>,
    split_ended: bool,
    source: String,
}

impl NexmarkSource {
    /// Subtask `ctx.subtask` of a nexmark source.
    pub fn new(config: Arc<NexmarkConfig>, ctx: &SourceContext) -> Self {
        NexmarkSource {
            config,
            subtask: ctx.subtask as u64,
            parallelism: ctx.parallelism.max(1) as u64,
            next: ctx.subtask as u64,
            batch_size: ctx.batch_size.max(1) as u64,
            linger: ctx.linger,
            clock: None,
            split_ended: false,
            source: ctx.source.clone(),
        }
    }

    /// Rows this subtask has still to emit (`None`: unbounded).
    fn remaining(&self) -> Option<u64> {
        self.config.table_total.map(|t| {
            if self.next >= t {
                0
            } else {
                (t - self.next).div_ceil(self.parallelism)
            }
        })
    }

    /// The global event number of this subtask's `j`-th row from `next`.
    fn event(&self, j: u64) -> u64 {
        self.config
            .table
            .event_of(self.next.saturating_add(j.saturating_mul(self.parallelism)))
    }

    /// When (after the clock's start) global event `n` is due.
    fn due(&self, n: u64, base: u64, rate: f64) -> Duration {
        let secs = n.saturating_sub(base) as f64 / rate;
        // Capped so that `Instant + due` cannot overflow for absurdly small rates.
        const CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        Duration::try_from_secs_f64(secs).unwrap_or(CAP).min(CAP)
    }

    /// How many of the next `want` rows are due `elapsed` after the clock's start.
    fn due_count(&self, want: u64, elapsed: Duration, base: u64, rate: f64) -> u64 {
        let (mut lo, mut hi) = (0u64, want);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.due(self.event(mid), base, rate) <= elapsed {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

#[async_trait::async_trait]
impl Source for NexmarkSource {
    fn schema(&self) -> SchemaRef {
        self.config.schema.clone()
    }

    async fn poll_next(&mut self) -> Result<SourcePoll> {
        let split = u32::try_from(self.subtask).unwrap_or(u32::MAX);
        let remaining = self.remaining();
        if remaining == Some(0) {
            if !self.split_ended {
                self.split_ended = true;
                tracing::debug!(source = %self.source, subtask = self.subtask, "nexmark done");
                return Ok(SourcePoll::SplitEnd(split));
            }
            return Ok(SourcePoll::Finished);
        }
        let want = remaining.map_or(self.batch_size, |r| r.min(self.batch_size));
        let n = match self.config.rate {
            None => want,
            Some(rate) => {
                // All subtasks share one timeline: event `base` (a multiple of 50 × p,
                // 0 on a fresh start) is due at `t0`.
                let first = self.event(0);
                let base = first - first % (PROPORTION * self.parallelism);
                let (t0, base) = *self.clock.get_or_insert_with(|| (Instant::now(), base));
                let now = Instant::now();
                let due = self.due_count(want, now.duration_since(t0), base, rate);
                let linger_end = t0 + self.due(first, base, rate) + self.linger;
                if due == want || (due > 0 && now >= linger_end) {
                    due
                } else {
                    // Wait until the batch is full or the first row has lingered.
                    let full = t0 + self.due(self.event(want - 1), base, rate);
                    let target = full.min(linger_end);
                    let wait = target.saturating_duration_since(now);
                    if wait > MAX_SLEEP {
                        tokio::time::sleep(MAX_SLEEP).await;
                        return Ok(SourcePoll::Pending(wait - MAX_SLEEP));
                    }
                    tokio::time::sleep_until(target).await;
                    // The first row is due by `target`: at least one row.
                    self.due_count(want, target.duration_since(t0), base, rate)
                        .max(1)
                }
            }
        };
        let events: Vec<u64> = (0..n).map(|j| self.event(j)).collect();
        let batch = self.config.batch(&events)?;
        self.next = self.next.saturating_add(n.saturating_mul(self.parallelism));
        Ok(SourcePoll::Batch { split, batch })
    }

    fn split_description(&self, split: u32) -> String {
        format!("nexmark subtask {split}")
    }

    fn position(&self) -> Value {
        Value::from(self.config.table.event_of(self.next))
    }

    fn restore(&mut self, position: &Value) -> Result<()> {
        if position.is_null() {
            return Ok(());
        }
        let n = position
            .as_u64()
            .or_else(|| position.get("next_event").and_then(Value::as_u64))
            .ok_or_else(|| {
                EngineError::connector(
                    format!("nexmark source {}", self.source),
                    format!("invalid position {position}: expected the next event number"),
                    false,
                )
            })?;
        // The first event of this subtask's table at or after `n`, then the first of
        // this subtask's stride from there.
        let k = self.config.table.count_before(n);
        let aligned = stride_at_or_after(k, self.subtask, self.parallelism);
        if aligned != k || self.config.table.event_of(k) != n {
            tracing::warn!(
                source = %self.source,
                position = n,
                resumed_at = self.config.table.event_of(aligned),
                "nexmark position is not an event of this subtask; resuming at its next event"
            );
        }
        self.next = aligned;
        self.clock = None;
        self.split_ended = false;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use serde_json::json;
    use std::collections::BTreeSet;

    /// The error of a build that must fail.
    fn err<T>(r: Result<T, FieldError>) -> FieldError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn ctx(subtask: usize, parallelism: usize, batch_size: usize) -> SourceContext {
        SourceContext {
            job: "job".into(),
            source: "nx".into(),
            subtask,
            parallelism,
            batch_size,
            linger: Duration::from_millis(200),
        }
    }

    fn build(options: Value) -> Result<SourceBuild, FieldError> {
        build_with(options, None)
    }

    fn build_with(options: Value, schema: Option<SchemaRef>) -> Result<SourceBuild, FieldError> {
        let bctx = BuildContext {
            checkpoints: Default::default(),
            aggregates: Default::default(),
            job: "job".into(),
            base_dir: ".".into(),
        };
        NexmarkFactory.build(&bctx, "nx", &options, schema)
    }

    fn opts(table: &str, events: u64, seed: u64) -> Value {
        json!({"table": table, "events": events, "seed": seed})
    }

    /// Runs every subtask to the end; returns its batches, per subtask.
    async fn run(b: &SourceBuild, parallelism: usize, batch_size: usize) -> Vec<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for s in 0..parallelism {
            let mut src = (b.create)(&ctx(s, parallelism, batch_size)).unwrap();
            let mut batches = Vec::new();
            let mut ended = false;
            loop {
                match src.poll_next().await.unwrap() {
                    SourcePoll::Batch { split, batch } => {
                        assert_eq!(split as usize, s);
                        assert!(batch.num_rows() > 0 && batch.num_rows() <= batch_size);
                        assert_eq!(batch.schema(), b.schema);
                        batches.push(batch);
                    }
                    SourcePoll::SplitEnd(split) => {
                        assert_eq!(split as usize, s);
                        ended = true;
                    }
                    SourcePoll::Pending(d) => tokio::time::sleep(d).await,
                    SourcePoll::NewSplits(_) => {}
                    SourcePoll::Finished => break,
                }
            }
            assert!(ended);
            out.push(batches);
        }
        out
    }

    fn to_json(batches: &[RecordBatch]) -> Vec<String> {
        let mut buf = Vec::new();
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        for b in batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    async fn rows(table: &str, events: u64, seed: u64, parallelism: usize) -> Vec<Vec<String>> {
        let b = build(opts(table, events, seed)).unwrap();
        run(&b, parallelism, 64)
            .await
            .iter()
            .map(|s| to_json(s))
            .collect()
    }

    fn int_column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column_by_name(name)
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn time_column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column_by_name(name)
                    .unwrap()
                    .as_primitive::<TimestampMillisecondType>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn event_numbering() {
        for table in [Table::Person, Table::Auction, Table::Bid] {
            for k in 0..500 {
                let n = table.event_of(k);
                assert_eq!(Table::of_event(n), table, "{table:?} {k}");
                assert_eq!(table.count_before(n), k, "{table:?} {k}");
                assert_eq!(table.count_before(n + 1), k + 1, "{table:?} {k}");
            }
        }
        let kinds: Vec<Table> = (0..50).map(Table::of_event).collect();
        assert_eq!(kinds[0], Table::Person);
        assert!(kinds[1..4].iter().all(|t| *t == Table::Auction));
        assert!(kinds[4..].iter().all(|t| *t == Table::Bid));
        assert_eq!(last_auction(1), 0);
        assert_eq!(last_auction(3), 2);
        assert_eq!(last_auction(49), 2);
        assert_eq!(last_auction(50), 2);
        assert_eq!(last_auction(51), 3);
    }

    #[tokio::test]
    async fn same_seed_same_rows_whatever_the_parallelism() {
        for table in ["person", "auction", "bid"] {
            let one = rows(table, 3000, 7, 1).await.concat();
            assert!(!one.is_empty());
            assert_eq!(rows(table, 3000, 7, 1).await.concat(), one, "{table}");
            let b = build(opts(table, 3000, 7)).unwrap();
            let other_batches = to_json(&run(&b, 1, 7).await.concat());
            assert_eq!(other_batches, one, "{table}: batch size changes rows");
            let three = rows(table, 3000, 7, 3).await;
            let mut a = one.clone();
            let mut c = three.concat();
            a.sort();
            c.sort();
            assert_eq!(a, c, "{table}");
            // Subtask 1 of 3 emits rows 1, 4, 7, … of the single-subtask run.
            let expect: Vec<_> = one.iter().skip(1).step_by(3).cloned().collect();
            assert_eq!(three[1], expect, "{table}");
            assert_ne!(rows(table, 3000, 8, 1).await.concat(), one, "{table}");
        }
    }

    #[tokio::test]
    async fn the_mix_ids_and_times() {
        let events = 5000;
        let persons = run(&build(opts("person", events, 1)).unwrap(), 1, 1000)
            .await
            .concat();
        let auctions = run(&build(opts("auction", events, 1)).unwrap(), 1, 1000)
            .await
            .concat();
        let bids = run(&build(opts("bid", events, 1)).unwrap(), 1, 1000)
            .await
            .concat();
        let count = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
        assert_eq!(count(&persons), 100);
        assert_eq!(count(&auctions), 300);
        assert_eq!(count(&bids), 4600);
        assert_eq!(int_column(&persons, "id"), (1000..1100).collect::<Vec<_>>());
        assert_eq!(
            int_column(&auctions, "id"),
            (1000..1300).collect::<Vec<_>>()
        );
        // Event n is at 2024-01-01T00:00:00Z + n ms.
        let start = 1_704_067_200_000i64;
        let pt = time_column(&persons, "date_time");
        assert_eq!(pt[0], start);
        assert_eq!(pt[1], start + 50);
        let at = time_column(&auctions, "date_time");
        assert_eq!(&at[..4], &[start + 1, start + 2, start + 3, start + 51]);
        let bt = time_column(&bids, "date_time");
        assert_eq!(&bt[..2], &[start + 4, start + 5]);
        assert_eq!(bt[46], start + 54);
        assert!(bt.windows(2).all(|w| w[0] < w[1]));
        let expires = time_column(&auctions, "expires");
        assert!(at
            .iter()
            .zip(&expires)
            .all(|(a, e)| e > a && *e <= a + 3334));
        // Values look like Nexmark's.
        let category = int_column(&auctions, "category");
        assert!(category.iter().all(|c| (10..15).contains(c)));
        let initial = int_column(&auctions, "initial_bid");
        let reserve = int_column(&auctions, "reserve");
        assert!(initial.iter().zip(&reserve).all(|(i, r)| r > i));
        let price = int_column(&bids, "price");
        assert!(price.iter().all(|p| (100..=100_000_000).contains(p)));
        let p = &persons[0];
        let state = p.column_by_name("state").unwrap().as_string::<i32>();
        assert!(state.iter().all(|s| US_STATES.contains(&s.unwrap())));
        let card = p.column_by_name("credit_card").unwrap().as_string::<i32>();
        assert!(card.iter().all(|c| {
            let c = c.unwrap();
            c.len() == 19 && c.split(' ').all(|g| g.len() == 4)
        }));
        let email = p
            .column_by_name("email_address")
            .unwrap()
            .as_string::<i32>();
        assert!(email.iter().all(|e| e.unwrap().ends_with(".com")));
        let b = &bids[0];
        let channel = b.column_by_name("channel").unwrap().as_string::<i32>();
        let hot = channel
            .iter()
            .filter(|c| HOT_CHANNELS.contains(&c.unwrap()))
            .count();
        assert!(hot > 300 && hot < 700, "{hot} hot of 1000");
        let url = b.column_by_name("url").unwrap().as_string::<i32>();
        assert!(url
            .iter()
            .all(|u| u.unwrap().starts_with("https://www.nexmark.com/")));
        // `extra` pads bids to about 100 bytes.
        let extra = b.column_by_name("extra").unwrap().as_string::<i32>();
        let avg = extra.iter().map(|e| e.unwrap().len()).sum::<usize>() / extra.len();
        assert!((60..=76).contains(&avg), "{avg}");
        assert_eq!(extra.null_count(), 0);
    }

    #[tokio::test]
    async fn references_exist_and_are_hot() {
        let events = 200_000;
        let start = 1_704_067_200_000i64;
        let bids = run(&build(opts("bid", events, 3)).unwrap(), 1, 4096)
            .await
            .concat();
        let times = time_column(&bids, "date_time");
        let auctions = int_column(&bids, "auction");
        let bidders = int_column(&bids, "bidder");
        for ((t, a), b) in times.iter().zip(&auctions).zip(&bidders) {
            let n = (t - start) as u64;
            assert_eq!(Table::of_event(n), Table::Bid);
            let made_auctions = Table::Auction.count_before(n) as i64;
            let made_persons = Table::Person.count_before(n) as i64;
            assert!(
                *a >= 1000 && *a < 1000 + made_auctions,
                "bid {n}: auction {a}"
            );
            assert!(
                *b >= 1000 && *b < 1000 + made_persons,
                "bid {n}: bidder {b}"
            );
            assert!(
                *a >= 1000 + made_auctions - 101,
                "bid {n}: stale auction {a}"
            );
        }
        // About half of the bids go to the hot auction of their time.
        let hot = times
            .iter()
            .zip(&auctions)
            .filter(|(t, a)| {
                let n = (**t - start) as u64;
                **a == 1000 + (last_auction(n) / 100 * 100) as i64
            })
            .count();
        let share = hot as f64 / auctions.len() as f64;
        assert!((0.48..0.53).contains(&share), "{share}");
        let auction_rows = run(&build(opts("auction", events, 3)).unwrap(), 1, 4096)
            .await
            .concat();
        let times = time_column(&auction_rows, "date_time");
        let sellers = int_column(&auction_rows, "seller");
        let mut distinct = BTreeSet::new();
        for (t, s) in times.iter().zip(&sellers) {
            let n = (t - start) as u64;
            let made_persons = Table::Person.count_before(n) as i64;
            assert!(
                *s >= 1000 && *s < 1000 + made_persons,
                "auction {n}: seller {s}"
            );
            distinct.insert(*s);
        }
        assert!(distinct.len() > 100, "{}", distinct.len());
    }

    #[tokio::test]
    async fn position_and_restore() {
        for table in ["person", "auction", "bid"] {
            let b = build(opts(table, 20_000, 5)).unwrap();
            let whole: Vec<Vec<String>> = run(&b, 2, 16).await.iter().map(|s| to_json(s)).collect();
            for (subtask, expected) in whole.iter().enumerate() {
                let mut first = (b.create)(&ctx(subtask, 2, 16)).unwrap();
                let mut got = Vec::new();
                for _ in 0..3 {
                    let SourcePoll::Batch { batch, .. } = first.poll_next().await.unwrap() else {
                        panic!("expected a batch")
                    };
                    got.extend(to_json(&[batch]));
                }
                let pos = first.position();
                let t = match table {
                    "person" => Table::Person,
                    "auction" => Table::Auction,
                    _ => Table::Bid,
                };
                assert_eq!(pos, json!(t.event_of(96 + subtask as u64)));
                let mut second = (b.create)(&ctx(subtask, 2, 16)).unwrap();
                second.restore(&pos).unwrap();
                loop {
                    match second.poll_next().await.unwrap() {
                        SourcePoll::Batch { batch, .. } => got.extend(to_json(&[batch])),
                        SourcePoll::NewSplits(_) => {}
                        SourcePoll::Finished => break,
                        _ => {}
                    }
                }
                assert_eq!(&got, expected, "{table} subtask {subtask}");
            }
        }
        let b = build(opts("bid", 1000, 5)).unwrap();
        let mut src = (b.create)(&ctx(0, 1, 8)).unwrap();
        let e = src.restore(&json!("soon")).unwrap_err();
        assert!(e.to_string().contains("invalid position"), "{e}");
        let mut src = (b.create)(&ctx(0, 3, 8)).unwrap();
        let e = src.restore_all(&[json!(16), json!(9)]).unwrap_err();
        assert!(e.to_string().contains("another parallelism"), "{e}");
    }

    #[tokio::test]
    async fn unbounded_and_options() {
        let b = build(json!({
            "table": "person",
            "event_gap": "10ms",
            "start": "2024-06-01T00:00:00Z",
        }))
        .unwrap();
        assert!(!b.bounded && !b.needs_format);
        assert_eq!(b.describe, "nexmark person, unbounded, seed 0");
        let mut src = (b.create)(&ctx(0, 1, 50)).unwrap();
        for _ in 0..3 {
            let SourcePoll::Batch { batch, .. } = src.poll_next().await.unwrap() else {
                panic!("expected a batch")
            };
            assert_eq!(batch.num_rows(), 50);
            let t = time_column(&[batch], "date_time");
            assert_eq!(t[1] - t[0], 500);
        }
        assert_eq!(src.position(), json!(150 * 50));
        // The declared schema may be given if it is the table's.
        let s = Table::Bid.schema();
        build_with(json!({"table": "bid"}), Some(s)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn rate_is_honoured_on_the_paused_clock() {
        // 1000 events at 500 events/s: 2 s; the bids are 920 of them.
        let b = build(json!({"table": "bid", "events": 1000, "rate": 500})).unwrap();
        for parallelism in [1usize, 2] {
            let start = Instant::now();
            let mut total = 0;
            for subtask in 0..parallelism {
                let mut src = (b.create)(&ctx(subtask, parallelism, 64)).unwrap();
                let t0 = Instant::now();
                let mut polls = 0;
                loop {
                    polls += 1;
                    assert!(polls < 1000, "too many polls: busy waiting?");
                    match src.poll_next().await.unwrap() {
                        SourcePoll::Batch { batch, .. } => {
                            let elapsed = t0.elapsed().as_secs_f64();
                            let last = *time_column(std::slice::from_ref(&batch), "date_time")
                                .last()
                                .unwrap();
                            let n = (last - 1_704_067_200_000) as f64;
                            assert!(elapsed + 1e-6 >= n / 500.0, "event {n} at {elapsed}");
                            total += batch.num_rows();
                        }
                        SourcePoll::Pending(d) => tokio::time::sleep(d).await,
                        SourcePoll::SplitEnd(_) => {}
                        SourcePoll::NewSplits(_) => {}
                        SourcePoll::Finished => break,
                    }
                }
                let took = t0.elapsed();
                assert!(
                    took >= Duration::from_millis(1950) && took <= Duration::from_millis(2100),
                    "p={parallelism}: took {took:?}"
                );
            }
            assert_eq!(total, 920);
            assert!(start.elapsed() >= Duration::from_millis(1950) * parallelism as u32);
        }
    }

    #[test]
    fn option_errors() {
        let e = err(build(json!({})));
        assert_eq!(e.path, "");
        assert!(e.message.contains("`table`"), "{e}");
        let cases = [
            (json!({"table": "bids"}), "/table"),
            (json!({"table": "bid", "event": 5}), "/event"),
            (json!({"table": "bid", "events": -5}), "/events"),
            (json!({"table": "bid", "rate": 0}), "/rate"),
            (json!({"table": "bid", "rate": "fast"}), "/rate"),
            (json!({"table": "bid", "seed": "x"}), "/seed"),
            (json!({"table": "bid", "event_gap": "often"}), "/event_gap"),
            (json!({"table": "bid", "start": "yesterday"}), "/start"),
            (json!({"table": "bid", "start": true}), "/start"),
        ];
        for (o, path) in cases {
            let e = err(build(o.clone()));
            assert_eq!(e.path, path, "{o}: {e}");
        }
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let e = err(build_with(json!({"table": "bid"}), Some(s)));
        assert_eq!(e.path, "/schema");
        assert!(e.message.contains("auction: int, bidder: int"), "{e}");
    }

    #[test]
    fn options_schema_documents_the_keys() {
        let s = NexmarkFactory.options_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["required"], json!(["table"]));
        let props = s["properties"].as_object().unwrap();
        for k in ["table", "events", "seed", "rate", "event_gap", "start"] {
            assert!(props[k]["description"].is_string(), "{k}");
        }
        assert!(s.to_string().contains("auction"), "{s}");
        assert!(!s.to_string().contains("$ref"), "{s}");
    }
}
