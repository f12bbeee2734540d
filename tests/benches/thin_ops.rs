//! Thin volume I/O, growth and clone against qemu-img on the same images (placeholder, filled in by the thin benchmark work).
fn main() {}
