//! Bytes a second of `compress` by the number of busy lanes, against one message at a time:
//! `cargo run --release --example throughput [MIB_PER_LANE]`.

use std::time::Instant;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(4, |s| s.parse().expect("a number of MiB"));
    let len = mib << 20;
    let messages: Vec<Vec<u8>> = (0..md5_lanes::LANES)
        .map(|lane| (0..len).map(|i| (i ^ (lane * 131)) as u8).collect())
        .collect();
    let timed = |lanes: usize| {
        let slices: Vec<&[u8]> = messages[..lanes].iter().map(Vec::as_slice).collect();
        let mut states = vec![md5_lanes::INITIAL_STATE; lanes];
        let start = Instant::now();
        // In 64 KiB pieces, as a fetch hands them over.
        for at in (0..len).step_by(64 << 10) {
            let pieces: Vec<&[u8]> = slices.iter().map(|s| &s[at..at + (64 << 10)]).collect();
            md5_lanes::compress(&mut states, &pieces);
        }
        std::hint::black_box(&states);
        (lanes * len) as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let one = {
        let start = Instant::now();
        let mut state = md5_lanes::INITIAL_STATE;
        md5_lanes::compress_one(&mut state, &messages[0]);
        std::hint::black_box(&state);
        len as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    println!("lanes available: {}", md5_lanes::available());
    println!("one message at a time: {one:.0} MB/s");
    for lanes in [2, 3, 4, 8, 12, 16] {
        let rate = timed(lanes);
        println!("{lanes:2} lanes: {rate:5.0} MB/s ({:.2}x)", rate / one);
    }
}
