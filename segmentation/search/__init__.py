"""Lost-bag search: crops described as vectors, queries (a photo or a description) matched against them."""
