# Runs inside the VM (`cargo xtask vm run`): one propagation run with every scheduler switch
# and wake-up recorded, for tests/scripts/propagation_sched.py to say which thread held each
# vCPU while each change was on its way. Usage, from the workspace:
#
#   XTASK_VM_EXTRA=$T/release/corral-bench-propagation:/usr/bin/perf:tests/scripts/propagation_sched.sh \
#     cargo xtask vm run "sh /usr/bin/propagation_sched.sh 3" > sched.log
#   python3 tests/scripts/propagation_sched.py sched.log
#
# ($T is the cargo target directory.) The first argument is the director count (default 3).
# perf records on the monotonic clock; the bench prints that clock beside the wall clock
# (`TIMELINE_CLOCKS`) so the two records line up.
n=${1:-3}
corral-bench-propagation --directors "$n" --realtime 10 --changes 200 --timeline --stages --idle-secs 5 > /tmp/b.log 2>&1 &
bench=$!
while ! grep -q IDLE_START /tmp/b.log; do sleep 0.2; done
# Thread ids → daemon directory and thread name (the trace has ids only).
for p in /proc/[0-9]*; do
  case "$(cat "$p/comm" 2>/dev/null)" in
    corrald|corral-bench-pr*)
      for t in "$p"/task/*; do
        echo "THREAD pid=${p##*/} tid=${t##*/} comm=$(cat "$t/comm") cmd=$(tr '\0' ' ' < "$p/cmdline")"
      done;;
  esac
done
# The idle window, then 200 changes at ≈ 50 ms (3 directors) to ≈ 70 ms (5) each, with room.
perf record -k mono -e sched:sched_switch -e sched:sched_wakeup -a -o /tmp/sched.data sleep $((8 + 3 * n)) 2>&1 | tail -1
wait $bench
cat /tmp/b.log
perf script -i /tmp/sched.data -F time,cpu,tid,event,trace 2>/dev/null | sed 's/^/SCHED /'
