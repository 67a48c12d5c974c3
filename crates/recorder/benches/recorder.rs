fn main() {} // placeholder so the workspace parses; the owner replaces it
