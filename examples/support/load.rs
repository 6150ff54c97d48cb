//! What the demo, the origin and the load generator share: a small
//! deterministic PRNG, Zipf-distributed key ranks, and duration flags.
//!
//! Included as a module (`#[path = "support/load.rs"] mod load;`).

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A tiny deterministic PRNG (SplitMix64): enough to draw keys, and no
/// dependency.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    /// The next value, uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Ranks `0..n` drawn with probability proportional to `1 / (rank + 1)^s`
/// (Zipf's law with exponent `s`; rank 0 is the most popular).
pub(crate) struct Zipf {
    /// The cumulative weights, normalised: `cdf[i]` is P(rank <= i).
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks (at least one) with exponent `s`.
    pub(crate) fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n.max(1))
            .map(|rank| {
                total += (rank as f64).powf(-s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    /// One rank.
    pub(crate) fn sample(&self, rng: &mut SplitMix64) -> usize {
        let x = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= x)
            .min(self.cdf.len() - 1)
    }
}

/// A duration flag's value: a number with `ms`, `s` or `m` (`50ms`, `10s`).
pub(crate) fn parse_duration(flag: &str, v: &str) -> Result<Duration, String> {
    let bad = || format!("{flag} {v:?}: expected a duration such as 10s or 50ms");
    let (n, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map_or((v, ""), |i| v.split_at(i));
    let n: u64 = n.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(bad()),
    }
}

/// The `--flag value` pairs of a command line (without the program's
/// name); `--help` or `-h` prints `usage` and exits.
pub(crate) fn flag_pairs(
    mut it: impl Iterator<Item = String>,
    usage: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{usage}");
            std::process::exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        pairs.push((flag, value));
    }
    Ok(pairs)
}

/// A flag's value parsed as a `T`, or an error naming the flag.
pub(crate) fn parse<T: FromStr>(flag: &str, v: &str) -> Result<T, String>
where
    T::Err: Display,
{
    v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
}
