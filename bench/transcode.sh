#!/usr/bin/env bash
# Benchmark (not a test): `drake transcode` against the ffmpeg CLI doing the same
# work on the same machine in the same run: same filters, same encoder options
# (read back from drake's rendition.json), and both an MP4 and fMP4 HLS output.
# Prints median wall time and peak RSS per rendition, and the drake/ffmpeg ratios.
# Usage: bench/transcode.sh [RUNS=3] [SECONDS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
runs="${1:-3}"
secs="${2:-20}"

cargo build --release --bin drake >&2
drake="$PWD/target/release/drake"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/src.mp4"
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=s=1280x720:r=30:d=$secs" \
  -f lavfi -i "sine=f=440:d=$secs:sample_rate=44100" -c:v libx264 -preset veryfast -c:a aac -shortest "$src"

# Runs a command, printing "wall_seconds peak_kib".
measure() { /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/time"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

printf "%-8s %10s %10s %7s %12s %12s %7s\n" rendition drake_s ffmpeg_s ratio drake_MiB ffmpeg_MiB ratio
for r in 240p 360p 480p 720p; do
  : > "$work/d"; : > "$work/f"
  for i in $(seq "$runs"); do
    rm -rf "$work/out"
    measure "$drake" transcode "$src" --profile web --rendition "$r" --out "$work/out" >> "$work/d"
    # The same settings drake used, from its own report.
    mapfile -t args < <(python3 - "$work/out/rendition.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["video"]["encoder_options"]
fps = r["frame_rate"]
gop = 2.0
print(f"-filter_complex")
print(f"[0:v]setpts=PTS-0/TB,fps=fps={fps}:start_time=0,scale={r['width']}:{r['height']}:flags=bicubic,setsar=1,format=yuv420p[v];"
      f"[0:a]asetpts=PTS-0/TB,aresample=48000:async=1:first_pts=0[a]")
for a in ["-map", "[v]", "-map", "[a]", "-c:v", r["video"]["encoder"]]:
    print(a)
for k, v in o.items():
    print("-" + k); print(v)
for a in ["-force_key_frames", f"expr:gte(t,n_forced*{gop})", "-c:a", "aac", "-b:a", str(r["audio"]["bitrate"]), "-ac", "2"]:
    print(a)
PY
)
    rm -rf "$work/ff"; mkdir -p "$work/ff"
    measure ffmpeg -hide_banner -loglevel error -y -i "$src" "${args[@]}" -flags +global_header -f tee \
      "[f=mp4:movflags=+faststart]$work/ff/out.mp4|[f=hls:hls_time=6:hls_playlist_type=vod:hls_segment_type=fmp4:hls_segment_filename=$work/ff/seg_%05d.m4s]$work/ff/playlist.m3u8" >> "$work/f"
  done
  dw=$(cut -d' ' -f1 "$work/d" | median); fw=$(cut -d' ' -f1 "$work/f" | median)
  dm=$(cut -d' ' -f2 "$work/d" | median); fm=$(cut -d' ' -f2 "$work/f" | median)
  awk -v r="$r" -v dw="$dw" -v fw="$fw" -v dm="$dm" -v fm="$fm" 'BEGIN {
    printf "%-8s %10.2f %10.2f %7.3f %12.1f %12.1f %7.3f\n", r, dw, fw, dw/fw, dm/1024, fm/1024, dm/fm }'
done
echo "($runs runs each, medians; source: ${secs} s of 1280x720 30 fps testsrc2 + AAC)"
