# Shared by scripts/load-proxy.sh and scripts/load-hot-path.sh (sourced, not run): the inputs of
# a proxy run (an EdDSA token with its JWKS) and nginx `auth_request` configurations.

# b64url < bytes → unpadded base64url
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# eddsa_token DIR SUB → prints a 2-hour EdDSA JWT for SUB (issuer https://issuer.example,
# audience broker) and writes DIR/jwks.json with its public key (kid "ed"), made with openssl.
eddsa_token() {
  local dir=$1 sub=$2 x now header claims signature
  openssl genpkey -algorithm ed25519 -out "$dir/ed.pem" 2>/dev/null
  x=$(openssl pkey -in "$dir/ed.pem" -pubout -outform DER | tail -c 32 | b64url)
  printf '{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"%s"}]}' "$x" >"$dir/jwks.json"
  now=$(date +%s)
  header=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"ed"}' | b64url)
  claims=$(printf '{"sub":"%s","iss":"https://issuer.example","aud":"broker","iat":%d,"exp":%d}' \
    "$sub" "$now" $((now + 7200)) | b64url)
  printf '%s.%s' "$header" "$claims" >"$dir/signing-input"
  signature=$(openssl pkeyutl -sign -inkey "$dir/ed.pem" -rawin -in "$dir/signing-input" | b64url)
  printf '%s.%s.%s\n' "$header" "$claims" "$signature"
}

# nginx_auth_server LISTEN_PORT AUTH_UPSTREAM AUTH_URI BROKER_UPSTREAM → prints a server block:
# every request is first sent (headers only) to http://AUTH_UPSTREAM/AUTH_URI by auth_request,
# then proxied to BROKER_UPSTREAM with the decision id header the auth server set, if any.
nginx_auth_server() {
  cat <<NGINX
  server {
    listen 127.0.0.1:$1;
    location = /_auth {
      internal;
      proxy_pass http://$2$3;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI \$request_uri;
      proxy_set_header X-Original-Method \$request_method;
    }
    location / {
      auth_request /_auth;
      auth_request_set \$decision \$upstream_http_x_flex_auth_decision_id;
      proxy_set_header X-Flex-Auth-Decision-Id \$decision;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://$4;
    }
  }
NGINX
}

# nginx_conf DIR UPSTREAMS SERVERS → writes DIR/nginx.conf: one worker in the foreground, no
# access log, temp paths under DIR; UPSTREAMS are `name=port` words (keepalive 64 each).
nginx_conf() {
  local dir=$1 upstreams=$2 servers=$3 u
  {
    cat <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
NGINX
    for u in $upstreams; do
      printf '  upstream %s { server 127.0.0.1:%s; keepalive 64; }\n' "${u%%=*}" "${u#*=}"
    done
    printf '%s\n}\n' "$servers"
  } >"$dir/nginx.conf"
}
