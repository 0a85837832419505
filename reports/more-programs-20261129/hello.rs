use std::collections::{BTreeMap, HashMap};
fn main() {
    let mut m: HashMap<u64, Vec<String>> = HashMap::new();
    for i in 0..200_000u64 { m.entry(i % 5000).or_default().push(format!("v{i}")); }
    let b: BTreeMap<_, _> = m.iter().map(|(k, v)| (*k, v.len())).collect();
    println!("{} {}", b.len(), b.values().sum::<usize>());
}
