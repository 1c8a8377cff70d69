"""JOSE and OAuth token code shared by the proxy, the token service and the SDK; imports nothing of ours."""
