-- wrk script for benchmarks/images.py: replay one request with the method in WRK_METHOD
-- (GET, HEAD, POST, PUT); its headers, the signed ones included, come from wrk's -H options.
wrk.method = os.getenv("WRK_METHOD") or "GET"
