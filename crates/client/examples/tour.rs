//! A five-minute tour against a running node:
//! `cargo run -p switchboard-client --example tour [-- 127.0.0.1:8080]`.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use switchboard_client::{Client, ClientError, ConnectOptions};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let wait = Duration::from_secs(2);

    let mut alice = Client::connect(&addr, ConnectOptions::user("alice")).await?;
    let mut bob = Client::connect(&addr, ConnectOptions::user("bob")).await?;
    println!(
        "alice got hello: node={:?} conn={:?}",
        alice.hello.str("node"),
        alice.hello.str("conn")
    );

    let ok = alice.join("lobby").await?;
    let epoch = ok.str("epoch").unwrap_or_default().to_owned();
    println!(
        "alice joined lobby: epoch={epoch} offset={:?}",
        ok.u64("offset")
    );
    bob.join("lobby").await?;
    alice.next_op("joined", wait).await?; // her own
    let joined = alice.next_op("joined", wait).await?;
    println!("alice sees joined: {:?}", joined.str("user"));

    let offset = bob.publish("lobby", "hello from bob".into()).await?;
    let msg = alice.next_op("msg", wait).await?;
    println!(
        "bob published at offset {offset}; alice got msg {} from {:?}",
        show(&msg),
        msg.str("from")
    );

    println!("presence in lobby: {:?}", alice.presence("lobby").await?);
    println!(
        "direct message delivered to {} connection(s)",
        alice.send_to("bob", "psst".into()).await?
    );
    println!("bob got dm: {}", show(&bob.next_op("dm", wait).await?));

    // Alice drops off; bob keeps talking; alice comes back and recovers.
    alice.close().await?;
    for i in 0..3u64 {
        bob.publish("lobby", i.into()).await?;
    }
    let mut alice = Client::connect(&addr, ConnectOptions::user("alice")).await?;
    let ok = alice.join_since("lobby", &epoch, offset).await?;
    println!(
        "alice rejoined with since={offset}: recovered={:?}",
        ok.bool("recovered")
    );
    for _ in 0..3 {
        let m = alice.next_op("msg", wait).await?;
        println!("  replayed offset {:?}: {}", m.u64("offset"), show(&m));
    }
    Ok(())
}

fn show(ev: &switchboard_client::Event) -> String {
    ev.get("data").map(ToString::to_string).unwrap_or_default()
}
