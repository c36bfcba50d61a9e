#!/usr/bin/env bash
# Benchmark (not a test): the whole `web` ladder of a 720p source through
# `drake up` with two local workers, against ONE ffmpeg CLI process that decodes
# once and encodes the same renditions with the same settings (filters and encoder
# options read from the farm's own rendition.json files), MP4 + fMP4 HLS each.
# The farm also makes thumbnails and a storyboard, which the CLI run does not.
# Prints median wall times, their ratio, and the farm's orchestration overhead.
# Farm and ffmpeg runs alternate after one untimed farm run (which also gives the
# ffmpeg command its settings), so a noisy machine's drift hits both alike.
# Usage: bench/farm.sh [RUNS=3] [SECONDS=20]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
runs="${1:-3}"
secs="${2:-20}"

cargo build --release --bin drake >&2
drake="$PWD/target/release/drake"
work=$(mktemp -d)
farm_pid=""
cleanup() { [ -n "$farm_pid" ] && kill "$farm_pid" 2>/dev/null && wait "$farm_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
src="$work/src.mp4"
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=s=1280x720:r=30:d=$secs" \
  -f lavfi -i "sine=f=440:d=$secs:sample_rate=44100" -c:v libx264 -preset veryfast -c:a aac -shortest "$src"

"$drake" up --workers 2 --listen 127.0.0.1:0 --data "$work/farm" > "$work/up.log" 2>"$work/up.err" &
farm_pid=$!
for _ in $(seq 100); do grep -q "admin token" "$work/up.log" 2>/dev/null && break; sleep 0.1; done
url=$(awk '/farm up at/ {print $NF}' "$work/up.log")
token=$(cat "$work/farm/admin-token")
sleep 1 # let both workers register

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: > "$work/farm_times"; : > "$work/ff_times"; : > "$work/ratios"; : > "$work/jobs"
farm_run() { # prints the wall time of one job through the farm
  local start end
  start=$(date +%s.%N)
  "$drake" submit "$src" --coordinator "$url" --token "$token" --wait > "$work/submit.out"
  end=$(date +%s.%N)
  awk '/^job / {print $2}' "$work/submit.out" >> "$work/jobs"
  echo "$end - $start" | bc
}

# A first job, not timed, gives the farm's settings for the ffmpeg command line.
farm_run > /dev/null
job=$(head -1 "$work/jobs")
: > "$work/jobs"

# The same ladder in one ffmpeg process, decoding once, settings from the farm's reports.
mapfile -t args < <(python3 - "$work/farm/storage/jobs/$job" "$work/ff" <<'PY'
import json, os, sys
root, out = sys.argv[1], sys.argv[2]
reps = sorted((json.load(open(os.path.join(root, d, "rendition.json"))) for d in os.listdir(root)
               if os.path.exists(os.path.join(root, d, "rendition.json"))), key=lambda r: r["height"])
n = len(reps)
fps = reps[0]["frame_rate"]
graph = f"[0:v]setpts=PTS-0/TB,fps=fps={fps}:start_time=0,split={n}" + "".join(f"[s{i}]" for i in range(n)) + ";"
graph += ";".join(f"[s{i}]scale={r['width']}:{r['height']}:flags=bicubic,setsar=1,format=yuv420p[v{i}]" for i, r in enumerate(reps))
graph += f";[0:a]asetpts=PTS-0/TB,aresample=48000:async=1:first_pts=0,asplit={n}" + "".join(f"[a{i}]" for i in range(n))
args = ["-filter_complex", graph]
for i, r in enumerate(reps):
    d = os.path.join(out, r["name"])
    args += ["-map", f"[v{i}]", "-map", f"[a{i}]", "-c:v", r["video"]["encoder"]]
    for k, v in r["video"]["encoder_options"].items():
        args += [f"-{k}:v", v]
    args += ["-force_key_frames", "expr:gte(t,n_forced*2)", "-c:a", "aac", "-b:a", str(r["audio"]["bitrate"]), "-ac", "2",
             "-flags", "+global_header", "-f", "tee",
             f"[f=mp4:movflags=+faststart]{d}/{r['name']}.mp4|[f=hls:hls_time=6:hls_playlist_type=vod:hls_segment_type=fmp4:hls_segment_filename={d}/seg_%05d.m4s]{d}/playlist.m3u8"]
print("\n".join(args))
PY
)
renditions=$(find "$work/farm/storage/jobs/$job" -name rendition.json -printf '%h\n' | xargs -n1 basename)
ffmpeg_run() { # prints the wall time of the same ladder in one ffmpeg process
  local start end
  rm -rf "$work/ff"
  for r in $renditions; do mkdir -p "$work/ff/$r"; done
  start=$(date +%s.%N)
  ffmpeg -hide_banner -loglevel error -y -i "$src" "${args[@]}"
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# Runs alternate (farm, ffmpeg, farm, ...), so the machine's drift hits both alike.
for i in $(seq "$runs"); do
  f=$(farm_run)
  c=$(ffmpeg_run)
  echo "$f" >> "$work/farm_times"
  echo "$c" >> "$work/ff_times"
  awk -v f="$f" -v c="$c" 'BEGIN { printf "%.4f\n", f/c }' >> "$work/ratios"
  awk -v i="$i" -v f="$f" -v c="$c" 'BEGIN { printf "run %d: drake up %.2f s, ffmpeg %.2f s, ratio %.3f\n", i, f, c, f/c }' >&2
done

fm=$(median < "$work/farm_times"); ff=$(median < "$work/ff_times"); rr=$(median < "$work/ratios")
echo "web ladder of a ${secs} s 1280x720 source, $runs alternating runs, medians"
awk -v f="$fm" -v c="$ff" -v r="$rr" 'BEGIN { printf "drake up (2 workers): %.2f s   ffmpeg (1 process, decode once): %.2f s   ratio %.3f (median of per-run ratios %.3f)\n", f, c, f/c, r }'

# Orchestration overhead from the farm's own task timings (unix ms).
for j in $(cat "$work/jobs"); do curl -s -H "Authorization: Bearer $token" "$url/api/v1/jobs/$j"; echo; done | python3 -c '
import json, statistics, sys
lease_to_child, exit_to_done, first_queue_to_child, playable, done = [], [], [], [], []
for line in sys.stdin:
    if not line.strip(): continue
    job = json.loads(line)
    tasks = job["tasks"]
    for t in tasks:
        tm = t["timing"]
        lease_to_child.append(tm["child_started_at"] - tm["leased_at"])
        exit_to_done.append(tm["finished_at"] - tm["child_exited_at"])
    first = min(tasks, key=lambda t: t["timing"]["queued_at"])["timing"]
    first_queue_to_child.append(first["child_started_at"] - first["queued_at"])
    ends = [t["timing"]["finished_at"] for t in tasks if t["kind"] == "transcode"]
    playable.append(min(ends) - job["created_at"])
    done.append(max(t["timing"]["finished_at"] for t in tasks) - job["created_at"])
m = statistics.median
print(f"queued -> child started (idle worker, first task of each job): median {m(first_queue_to_child):.0f} ms")
print(f"leased -> child started (every task):                          median {m(lease_to_child):.0f} ms")
print(f"child exited -> task succeeded (publish: PUT, read back, MOVE): median {m(exit_to_done):.0f} ms")
print(f"job created -> first rendition playable: median {m(playable) / 1000:.2f} s; -> every task done: median {m(done) / 1000:.2f} s")
'
