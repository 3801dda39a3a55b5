//! `weir-sample-payments`: a steady stream of sample payments for the quickstart, in the
//! shape `examples/spend-per-user.yaml` reads (`user_id`, `amount`, `currency`, `ts` in
//! epoch ms of now, a little out of order), keyed by user, until stopped. A burst
//! (`--burst N`) sends N payments at once first, so lag shows.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::{
    ClientConfig,
    producer::{BaseProducer, BaseRecord, Producer},
};
use weir_e2e::kafka;

/// Produces sample payments to a Kafka topic.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The topic to write.
    #[arg(long, default_value = "payments")]
    topic: String,
    /// Payments per second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Payments sent at once before the steady stream.
    #[arg(long, default_value_t = 0)]
    burst: u32,
    /// Distinct users.
    #[arg(long, default_value_t = 20)]
    users: u32,
}

const CURRENCIES: [&str; 4] = ["EUR", "EUR", "USD", "EUR"];

fn payment(n: u64, users: u32) -> (String, String) {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let user = format!("user-{}", (n * 31) % u64::from(users.max(1)));
    // Up to 2 s behind the clock: inside the example's 5 s of allowed disorder.
    let ts = now_ms - (n * 7919) % 2000;
    let amount = ((n * 37) % 9000) as f64 / 100.0 + 1.0;
    let currency = CURRENCIES[(n % 4) as usize];
    let payload = serde_json::json!({"user_id": user, "amount": amount, "currency": currency, "ts": ts});
    (user, payload.to_string())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &args.bootstrap).create()?;
    let send = |n: u64| -> anyhow::Result<()> {
        let (key, payload) = payment(n, args.users);
        kafka::send(&producer, BaseRecord::to(&args.topic).key(key.as_bytes()).payload(payload.as_bytes()))?;
        Ok(())
    };
    let mut n = 0;
    for _ in 0..args.burst {
        send(n)?;
        n += 1;
    }
    let every = Duration::from_secs(1) / args.rate.max(1);
    let mut next = Instant::now();
    loop {
        send(n)?;
        n += 1;
        producer.poll(Duration::ZERO);
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if n.is_multiple_of(u64::from(args.rate.max(1))) {
            producer.flush(Duration::from_secs(10))?;
        }
    }
}
