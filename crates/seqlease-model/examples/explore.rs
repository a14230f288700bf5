//! Check the protocol model at a bound given on the command line and print the verdict.
//!
//! `cargo run -p seqlease-model --example explore -- [max_slots] [max_time] [mutation]`
use seqlease_model::{Bound, Mutation, ProtocolModel, check};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut bound = Bound::DEFAULT;
    if let Some(n) = args.first().and_then(|a| a.parse().ok()) {
        bound.max_slots = n;
    }
    if let Some(t) = args.get(1).and_then(|a| a.parse().ok()) {
        bound.max_time = t;
    }
    let mutation = args.get(2).and_then(|name| {
        Mutation::ALL
            .into_iter()
            .find(|m| format!("{m:?}") == *name)
    });
    let model = ProtocolModel { bound, mutation };
    let verdict = check(model, mutation.map(|m| m.breaks()));
    println!("{bound:?}\nmutation: {mutation:?}\n{}", verdict.summary());
    for (name, path) in &verdict.violations {
        println!("VIOLATED {name}:\n{path}");
    }
    println!("unreached: {:?}", verdict.unreached);
}
