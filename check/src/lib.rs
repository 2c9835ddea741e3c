//! Skeleton: health checkers (issue 7). Nothing here works yet.
