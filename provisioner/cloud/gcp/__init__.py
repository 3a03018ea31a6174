"""The one thin layer of Google Cloud API calls. Nothing outside this package talks to an API.

`base` holds the client factory, operation waiting and error translation; the other modules send the
request objects that `provisioner.cloud.plan` builds.
"""
