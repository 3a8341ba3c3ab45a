// The floor of `cargo xtask bench veth`: an XDP program that drops every frame and does nothing
// else. Self-contained (no kernel headers), built with `clang -O2 -target bpf -c`.

#define SEC(name) __attribute__((section(name), used))

#define XDP_DROP 1

struct xdp_md;

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
