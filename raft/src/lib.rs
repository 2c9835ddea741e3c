//! Skeleton: Raft on redb (issue 5). Nothing here works yet.
