//! Skeleton: SWIM gossip over QUIC (issue 5). Nothing here works yet.
