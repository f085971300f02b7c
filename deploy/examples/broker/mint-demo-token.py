#!/usr/bin/env python3
"""Print an HS256 JWT for the broker example, signed with demo-hs256.secret (demo only).

    python3 deploy/examples/broker/mint-demo-token.py agent-demo
"""
import base64, hashlib, hmac, json, pathlib, sys, time

def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

subject = sys.argv[1] if len(sys.argv) > 1 else "agent-demo"
secret = (pathlib.Path(__file__).parent / "demo-hs256.secret").read_bytes().rstrip(b"\r\n")
now = int(time.time())
header = {"alg": "HS256", "typ": "JWT"}
claims = {"sub": subject, "iss": "https://issuer.example", "aud": "broker", "iat": now, "exp": now + 600}
signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
print(signing_input + "." + b64(signature))
