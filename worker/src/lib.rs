pub use ffmpeg_next; pub fn x(){ ffmpeg_next::init().unwrap(); }
