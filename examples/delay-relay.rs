//! Network latency for the benchmarks (`scripts/bench-dune`), where the kernel has no `tc netem`:
//! a relay in front of each cache box that adds a one-way delay to every byte, both ways, without
//! capping throughput (the relay is `tests/common/relay.rs`, which the tests check).
//!
//! ```sh
//! cargo run --release --example delay-relay -- --delay-ms 0.25 --to 127.0.0.1:20001 --to ...
//! ```
//!
//! For each `--to` it listens on a free loopback port and prints `relay LISTEN -> TARGET`; then it
//! times `GET /_status` straight to each box and through its relay, and prints the round trip
//! the relays add (`relay: added RTT 0.56 ms (target 0.50) ...`), and relays until killed. With
//! `--calibrate` it first takes from the delay what the relay's own cost adds to the round trip
//! (on 2 busy cores, 0.1-0.3 ms), then measures again.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[allow(dead_code)]
#[path = "../tests/common/stopping.rs"]
mod stopping;

#[allow(dead_code)]
#[path = "../tests/common/relay.rs"]
mod relay;

#[derive(Parser)]
#[command(about = "A TCP relay adding a one-way delay, both ways, in front of cache boxes")]
struct Args {
    /// The delay added to every byte in each direction, in milliseconds (a round trip gets twice
    /// it).
    #[arg(long)]
    delay_ms: f64,
    /// A cache box to relay to (HOST:PORT); one relay each.
    #[arg(long = "to", required = true)]
    targets: Vec<SocketAddr>,
    /// How many requests to time through each relay, and straight to its box, for the round
    /// trip printed.
    #[arg(long, default_value_t = 30)]
    probes: usize,
    /// Shorten the delay by what the relay itself adds to a round trip (its threads' wake-ups,
    /// one more loopback hop; measured), so that the round trip it adds is near twice
    /// --delay-ms rather than above it.
    #[arg(long)]
    calibrate: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(args.delay_ms.is_finite() && args.delay_ms >= 0.0) {
        return Err(format!("--delay-ms wants a delay, not {}", args.delay_ms).into());
    }
    let asked = Duration::from_secs_f64(args.delay_ms / 1000.0);
    let relays: Vec<_> = args
        .targets
        .iter()
        .map(|&target| relay::Relay::delayed(target, asked))
        .collect();
    for (relay, target) in relays.iter().zip(&args.targets) {
        println!("relay {} -> {target}", relay.addr());
    }
    let measure = || -> Result<(Duration, Duration), String> {
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        for (relay, &target) in relays.iter().zip(&args.targets) {
            let trips = relay::round_trips(target, relay.addr(), args.probes)
                .map_err(|e| format!("timing GET /_status of {target}: {e}"))?;
            direct.extend(trips.direct);
            relayed.extend(trips.relayed);
        }
        Ok((relay::median(&direct), relay::median(&relayed)))
    };
    let (mut direct, mut relayed) = measure()?;
    let mut delay = asked;
    let excess = relayed.saturating_sub(direct).saturating_sub(2 * asked);
    if args.calibrate && !asked.is_zero() && !excess.is_zero() {
        delay = asked.saturating_sub(excess / 2);
        for relay in &relays {
            relay.set_delay(delay);
        }
        (direct, relayed) = measure()?;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let calibrated = if delay == asked {
        String::new()
    } else {
        format!(
            "; one-way delay {:.3} ms, not {:.3}, for the relay's own {:.2} ms",
            ms(delay),
            ms(asked),
            ms(excess)
        )
    };
    println!(
        "relay: added RTT {:.2} ms (target {:.2}{calibrated}): GET /_status {:.2} ms through the \
         relays, {:.2} ms direct (medians of {} each)",
        ms(relayed.saturating_sub(direct)),
        ms(2 * asked),
        ms(relayed),
        ms(direct),
        args.probes * relays.len(),
    );
    loop {
        std::thread::park();
    }
}
