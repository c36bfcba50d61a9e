fn main(){ worker::x(); }
