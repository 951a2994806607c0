# An example input for runner-agent.pkr.hcl: copy it, replace the URLs with
# where your release lives and the digests with the lines of its
# SHA256SUMS (these are placeholders and fail the build), then
#   packer build -var-file=release.pkrvars.hcl packaging/packer
agent_url = {
  x86_64  = "https://github.com/runner-agent/runner-agent/releases/download/v0.1.0/runner-agent-0.1.0-x86_64-linux-musl.tar.gz"
  aarch64 = "https://github.com/runner-agent/runner-agent/releases/download/v0.1.0/runner-agent-0.1.0-aarch64-linux-musl.tar.gz"
}
agent_sha256 = {
  x86_64  = "0000000000000000000000000000000000000000000000000000000000000000"
  aarch64 = "0000000000000000000000000000000000000000000000000000000000000000"
}

# Bake actions/runner 2.331.0 (its digests are in the agent's built-in table).
runner_version = "2.331.0"

# The runner's own dependencies and docker, baked instead of installed at
# every boot (Ubuntu 24.04 names; on Amazon Linux 2023: libicu krb5-libs
# openssl-libs zlib docker git).
packages = ["libicu74", "libkrb5-3", "zlib1g", "docker.io", "git"]
