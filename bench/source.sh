# Sourced by the benchmarks: `bench_source SECONDS PATH` writes a 720p30 source with
# stereo audio whose content moves (a test pattern and a noise overlay), so that
# an encode costs what a real upload's does; source keyframes every 10 s.
bench_source() {
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=s=1280x720:r=30:d=$1" \
    -f lavfi -i "sine=f=440:d=$1:sample_rate=48000" -vf "noise=alls=4:allf=t" -ac 2 \
    -c:v libx264 -preset veryfast -crf 26 -g 300 -c:a aac -shortest "$2"
}
