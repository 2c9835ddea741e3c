fn main() { eprintln!("corrald: nothing is implemented yet"); std::process::exit(1) }
