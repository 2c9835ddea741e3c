# corral lab demo, run as the VM's payload (bash, root, IPVS modules loaded).
# Three LVS directors (corrald: cluster + VRRP + IPVS), three HTTP backends and a client, each in
# its own network namespace on one LAN (192.0.2.0/24), direct routing.
set -euo pipefail
step() { printf '\n=== %s\n' "$*"; }
ns() { local n=$1; shift; ip netns exec "$n" "$@"; }
ctl() { local n=$1; shift; corralctl --socket /run/corral/$n.sock "$@"; }
VIP=192.0.2.100
# One HTTP/1.0 request from the client to the VIP, bounded by $1 seconds (default 3); prints the
# body line (empty on failure).
# `exec tail`: timeout kills what it started; a forked tail could outlive it and hang the demo.
get() { ns client timeout "${1:-3}" bash -c "exec 3<>/dev/tcp/$VIP/80; printf 'GET / HTTP/1.0\r\n\r\n' >&3; exec tail -n 1 <&3" 2>/dev/null || true; }
# N requests, tallied per backend; fails the demo unless the tally is what the rules promise.
tally() { local n=$1 want=$2 got; got=$(for i in $(seq "$n"); do get; done | sort | uniq -c | awk '{print $4"="$1}' | tr '\n' ' '); echo "responses per backend: $got"; [ "$got" = "$want" ] || { echo "DEMO FAILED: expected $want"; exit 1; }; }
wait_until() { local what=$1 secs=$2; shift 2; for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "DEMO FAILED: $what"; for f in /var/log/corral/*.log; do echo "--- $f"; tail -n 15 "$f"; done; exit 1; }
master() { for d in d1 d2 d3; do if ns $d ip -o -4 addr show dev eth0 | grep -q " $VIP/"; then echo $d; fi; done; }

step "Building the lab: one LAN 192.0.2.0/24 with directors d1-d3 (.1-.3), backends web1-3 (.11-.13), a client (.50)"
ip netns add lan; ns lan ip link set lo up; ns lan ip link add br0 type bridge; ns lan ip link set br0 up
add_host() {
  ip netns add $1; ns $1 ip link set lo up
  ip link add p-$1 netns lan type veth peer name eth0 netns $1
  ns lan ip link set p-$1 master br0; ns lan ip link set p-$1 up
  ns $1 ip addr add $2/24 dev eth0; ns $1 ip link set eth0 up
}
add_host d1 192.0.2.1; add_host d2 192.0.2.2; add_host d3 192.0.2.3; add_host client 192.0.2.50
for i in 1 2 3; do
  add_host web$i 192.0.2.1$i
  # Direct routing: the backend owns the VIP on lo but never answers ARP for it.
  ns web$i ip addr add $VIP/32 dev lo
  for k in all eth0; do ns web$i sysctl -qw net.ipv4.conf.$k.arp_ignore=1 net.ipv4.conf.$k.arp_announce=2; done
  mkdir -p /srv/web$i; echo "hello from web$i (192.0.2.1$i)" > /srv/web$i/index.html
  ns web$i busybox httpd -p 80 -h /srv/web$i
done

step "Starting corrald on d1: it creates the cluster (CA, single-voter Raft) and runs VRRP for the VIP $VIP"
mkdir -p /run/corral /var/log/corral
conf() { # name ip priority [token]
  cat > /etc/corral-$1.toml <<EOF
[node]
name = "$1"
bind = "$2:7946"
data_dir = "/var/lib/corral/$1"
admin_socket = "/run/corral/$1.sock"

[cluster]
join = [$( [ -n "${4:-}" ] && echo '"192.0.2.1:7946"' )]
$( [ -n "${4:-}" ] && echo "token = \"$4\"" )
heartbeat = "250ms"

[director]
reconcile_interval = "1s"
sync_interface = "eth0"          # the kernel's connection-sync daemon follows VRRP
sync_id = 51

[[vrrp]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = $3
advert_interval = "200ms"
virtual_ips = ["$VIP/24"]
EOF
  # ip netns exec execs corrald, so $! is corrald itself (a function would leave a subshell).
  ip netns exec $1 corrald --config /etc/corral-$1.toml 2>/var/log/corral/$1.log &
  echo $! > /run/corral/$1.pid
}
conf d1 192.0.2.1 150
wait_until "d1 did not start" 20 ctl d1 raft status
wait_until "d1 never became leader" 20 bash -c "corralctl --socket /run/corral/d1.sock raft status | grep -q 'leader:    d1'"
TOKEN=""; for _ in $(seq 50); do TOKEN=$(ctl d1 token create --ttl 10m 2>/dev/null) && break; sleep 0.2; done
echo "join token (valid 10 minutes): ${TOKEN:0:24}…"

step "d2 and d3 join through d1 with that token (they get their own certificates; gossip and Raft run over mutual-TLS QUIC)"
conf d2 192.0.2.2 100 "$TOKEN"; conf d3 192.0.2.3 50 "$TOKEN"
wait_until "members did not agree" 60 bash -c "[ \$(corralctl --socket /run/corral/d3.sock members | grep -c alive) = 3 ]"
wait_until "3 voters not reached" 60 bash -c "corralctl --socket /run/corral/d1.sock raft status | grep -q 'voters:.*,.*,'"
ctl d3 members
ctl d2 raft status

step "One rule change on any director reaches every director's kernel: apply services.toml through d2"
cat > /tmp/services.toml <<'EOF'
[[virtual_server]]
address = "192.0.2.100:80"
scheduler = "rr"
forwarding = "dr"
[[virtual_server.real_server]]
address = "192.0.2.11:80"
[[virtual_server.real_server]]
address = "192.0.2.12:80"
[[virtual_server.real_server]]
address = "192.0.2.13:80"
EOF
cat /tmp/services.toml
ctl d2 apply -f /tmp/services.toml
for d in d1 d2 d3; do wait_until "$d did not program its IPVS" 20 bash -c "ip netns exec $d ipvsadm -Sn | grep -q 192.0.2.13"; done
for d in d1 d2 d3; do echo "--- ipvsadm -Sn on $d"; ns $d ipvsadm -Sn; done
diff <(ns d1 ipvsadm -Sn) <(ns d2 ipvsadm -Sn) && diff <(ns d1 ipvsadm -Sn) <(ns d3 ipvsadm -Sn) && echo "(byte-identical on all three directors)"

M=$(master); echo "VRRP master holding $VIP: $M"
wait_until "no answer through the VIP" 20 bash -c "ip netns exec client timeout 3 bash -c 'exec 3<>/dev/tcp/$VIP/80' "

step "Nine requests from the client to the VIP: round robin spreads them over the three backends"
tally 9 "web1=3 web2=3 web3=3 "

step "Rule change: drain web3 (weight 0: no new connections) and give web1 double weight under wrr"
sed -e 's/scheduler = "rr"/scheduler = "wrr"/' /tmp/services.toml > /tmp/services2.toml
ctl d3 apply -f /tmp/services2.toml
ctl d1 rs drain 192.0.2.100:80 192.0.2.13:80
ctl d2 rs weight 192.0.2.100:80 192.0.2.11:80 2
for d in d1 d2 d3; do wait_until "$d did not apply the change" 20 bash -c "ip netns exec $d ipvsadm -Sn | grep -q '192.0.2.11:80 -g -w 2'"; done
ctl d1 get services

step "Nine more requests: web3 gets none, web1 twice as many as web2"
tally 9 "web1=6 web2=3 "
ctl d1 status

step "Killing the VRRP master director $M (SIGKILL): the next in priority takes the VIP"
kill -9 "$(cat /run/corral/$M.pid)"
wait_until "the VIP did not move" 20 bash -c "[ -n \"\$(for d in d1 d2 d3; do [ \$d != $M ] && ip netns exec \$d ip -o -4 addr show dev eth0 | grep -q ' $VIP/' && echo \$d; done)\" ]"
# The killed process's namespace keeps its addresses (a real crashed machine would not); drop it
# the way a dead host drops off the LAN.
ns $M ip link set eth0 down
NEW=$(master | grep -v "^$M$" | head -1); echo "VIP now on $NEW"
answered() { [ -n "$(get 2)" ]; }
wait_until "requests did not resume" 20 answered

step "Nine requests after the failover: the same rules, now served through $NEW"
tally 9 "web1=6 web2=3 "
wait_until "the dead director not reported" 30 bash -c "corralctl --socket /run/corral/$NEW.sock members | grep $M | grep -q dead"
ctl $NEW members
ctl $NEW status

step "Tearing down"
for d in d1 d2 d3; do kill "$(cat /run/corral/$d.pid)" 2>/dev/null || true; done; sleep 1
for n in d1 d2 d3 web1 web2 web3 client lan; do ip netns del $n; done
echo "demo finished"
