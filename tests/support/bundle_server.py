"""A bundle source for tests/bundles.rs that misbehaves on request.

Usage: bundle_server.py ROOT [PORT]. Serves ROOT/bundle.tar.gz at /bundle.tar.gz on 127.0.0.1
(PORT, or a free one; the port is printed as the first line of stdout). What it does is read from
ROOT/mode on every request:

  ok       200 with an ETag (sha256 of the bytes), 304 when If-None-Match matches
  500      an internal server error
  slow     200 and a Content-Length, then one byte per second (at most 120 bytes, then close)
  short    200 with a Content-Length 1000 bytes longer than what it sends, then close
  endless  200, chunked, 64 KiB chunks for at most 30 s or 2 GiB, then close
  silent   accept the request and answer nothing for 60 s

Every request is appended to ROOT/access.log as `METHOD PATH STATUS`. Every case ends by itself
within 120 s, so a client that does not give up still lets the test finish.
"""

import hashlib
import http.server
import os
import socketserver
import sys
import time

ROOT = sys.argv[1]
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0


def mode():
    try:
        with open(os.path.join(ROOT, "mode")) as f:
            return f.read().strip() or "ok"
    except FileNotFoundError:
        return "ok"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, status):
        with open(os.path.join(ROOT, "access.log"), "a") as f:
            f.write(f"{self.command} {self.path} {status}\n")

    def do_GET(self):
        m = mode()
        if self.path != "/bundle.tar.gz":
            self.record(404)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if m == "500":
            self.record(500)
            body = b"internal error"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if m == "silent":
            self.record(0)
            time.sleep(60)
            self.close_connection = True
            return
        try:
            with open(os.path.join(ROOT, "bundle.tar.gz"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        if m == "ok":
            if self.headers.get("If-None-Match") == etag:
                self.record(304)
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.record(200)
            self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.close_connection = True
        try:
            if m == "slow":
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for byte in data[:120]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1)
            elif m == "short":
                self.send_header("Content-Length", str(len(data) + 1000))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            elif m == "endless":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\0" * 65536
                start = time.time()
                sent = 0
                while time.time() - start < 30 and sent < 2 << 30:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server(("127.0.0.1", PORT), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
