"""webhooks: Paystack and RevenueCat events, verified, recorded once, applied in order."""
