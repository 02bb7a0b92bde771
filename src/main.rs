fn main() {
    println!("tlc {}", env!("CARGO_PKG_VERSION"));
}
