"""Real peers for Strait's HTTP integration tests, written with the standard library (plus python3-h2 and
python3-grpcio where named): an HTTP/1.1 origin with controllable behaviours, HTTP/1.1 and HTTP/2
clients, an HTTP/2 origin, a gRPC server and client, a WebSocket echo server and client, and an nginx
upstream. Each module can be run on its own (`python3 -m peers.<module> --help`) for manual checks.
"""
