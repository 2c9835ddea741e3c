# corral lab demo, run as the VM's payload (bash, root, IPVS modules loaded).
# A client, one LVS director and three HTTP backends, each in its own network namespace.
set -euo pipefail
step() { printf '\n=== %s\n' "$*"; }
ns() { local n=$1; shift; ip netns exec "$n" "$@"; }
# One HTTP/1.0 request from the client namespace to the VIP; prints the body line.
get() { ns client bash -c 'exec 3<>/dev/tcp/203.0.113.1/80; printf "GET / HTTP/1.0\r\n\r\n" >&3; tail -n 1 <&3'; }
# N requests, tallied per backend; fails the demo unless the tally is what the rule promises.
tally() { local n=$1 want=$2 got; got=$(for i in $(seq "$n"); do get; done | sort | uniq -c | awk '{print $4"="$1}' | tr '\n' ' '); echo "responses per backend: $got"; [ "$got" = "$want" ] || { echo "DEMO FAILED: expected $want"; exit 1; }; }

step "Building the lab: client (203.0.113.2) -> director (VIP 203.0.113.1) -> backends 198.51.100.11-13"
for n in client director web1 web2 web3; do ip netns add $n; ns $n ip link set lo up; done
ip link add c0 netns client type veth peer name front netns director
ns client ip addr add 203.0.113.2/24 dev c0; ns client ip link set c0 up
ns director ip addr add 203.0.113.1/24 dev front; ns director ip link set front up
ns director ip link add br0 type bridge; ns director ip link set br0 up
ns director ip addr add 198.51.100.1/24 dev br0
ns director sysctl -qw net.ipv4.ip_forward=1
ns director sysctl -qw net.ipv4.vs.conntrack=1 2>/dev/null || true
for i in 1 2 3; do
  ip link add b$i netns director type veth peer name eth0 netns web$i
  ns director ip link set b$i master br0; ns director ip link set b$i up
  ns web$i ip addr add 198.51.100.1$i/24 dev eth0; ns web$i ip link set eth0 up
  ns web$i ip route add default via 198.51.100.1
  mkdir -p /srv/web$i; echo "hello from web$i (198.51.100.1$i)" > /srv/web$i/index.html
  ns web$i busybox httpd -p 80 -h /srv/web$i
done

step "Programming the director's kernel IPVS with corralctl (ipvsadm's rule format, applied over netlink)"
cat > /tmp/rules <<'EOF'
-A -t 203.0.113.1:80 -s rr
-a -t 203.0.113.1:80 -r 198.51.100.11:80 -m -w 1
-a -t 203.0.113.1:80 -r 198.51.100.12:80 -m -w 1
-a -t 203.0.113.1:80 -r 198.51.100.13:80 -m -w 1
EOF
cat /tmp/rules
ns director corralctl ipvs restore < /tmp/rules
ns director corralctl ipvs list

step "Nine requests from the client to the VIP: round robin spreads them over the three backends"
tally 9 "web1=3 web2=3 web3=3 "

step "Rule change: drain web3 (weight 0) and give web1 double weight; corralctl sends only the difference"
sed -e 's/198.51.100.13:80 -m -w 1/198.51.100.13:80 -m -w 0/' -e 's/198.51.100.11:80 -m -w 1/198.51.100.11:80 -m -w 2/' \
    -e 's/-s rr/-s wrr/' /tmp/rules > /tmp/rules2
ns director corralctl ipvs restore --dry-run < /tmp/rules2
ns director corralctl ipvs restore < /tmp/rules2
ns director corralctl ipvs list

step "Nine more requests: web3 gets none, web1 twice as many as web2"
tally 9 "web1=6 web2=3 "

step "Counters as ipvsadm shows them (corralctl prints the same layout)"
ns director corralctl ipvs list --stats
step "The saved table, byte-identical to ipvsadm -Sn"
ns director corralctl ipvs save
diff <(ns director corralctl ipvs save) <(ns director ipvsadm -Sn) && echo "(identical to ipvsadm -Sn)"

step "Tearing down"
for n in client director web1 web2 web3; do ip netns del $n; done
echo "demo finished"
